"""`flotilla daemon --config PATH` and `python -m daemon.main --config PATH`: run one daemon.

Signals: the first SIGTERM (or SIGINT) drains, a second forces; SIGHUP reloads the config.
Exit status: 0 after a clean stop, 1 when a supervised task crashed for good, 2 when NATS closed
for good, 78 (EX_CONFIG) for a config it cannot use, so systemd does not restart it in a loop.
Logs go to stderr at `--log-level` (or FLOTILLA_LOG_LEVEL; default info).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import uvloop

from common.configfile import ConfigError
from common.logs import LEVELS, env_level, error_line, setup_logging
from common.sdnotify import Notifier
from daemon.app import Daemon
from daemon.config import load_daemon_config
from daemon.ffmpeg.tools import find_tools

log = logging.getLogger("flotilla.daemon")


async def serve_daemon(daemon: Daemon) -> int:
    loop = asyncio.get_running_loop()
    stop_requests = 0
    stopper: asyncio.Task[None] | None = None
    forced: list[asyncio.Task[None]] = []

    def on_stop(signame: str) -> None:
        nonlocal stop_requests, stopper
        stop_requests += 1
        if stop_requests == 1:
            log.info("%s: draining (send again to force)", signame)
            stopper = loop.create_task(daemon.stop(), name="stop")
        else:
            log.warning("%s again: forcing", signame)
            forced.append(loop.create_task(daemon.stop(force=True), name="force-stop"))

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop, sig.name)
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(daemon.reload()))
    try:
        await daemon.start()
        await daemon.stopped.wait()
        if stopper is None:  # NATS closed, or a task crashed for good: stop what is left
            await daemon.stop(force=True)
        else:
            await stopper
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return daemon.exit_code


EX_CONFIG = 78  # systemd's RestartPreventExitStatus names it


async def serve_config(
    config_path: Path | str | None, *, log_level: int | None = None, log_json: bool | None = None
) -> int:
    """Load the config and run the daemon until it stops; the exit status as the result.

    `log_level` None: FLOTILLA_LOG_LEVEL, else info. `log_json` None: the config's `log_json`.
    """
    path = Path(config_path) if config_path is not None else None
    try:
        level = env_level(logging.INFO) if log_level is None else log_level
        cfg = load_daemon_config(path, required=path is not None)
        # No usable ffmpeg is as much a config to fix as a bad key: checked before anything starts.
        find_tools(cfg.ffmpeg, cfg.ffprobe)
    except (ConfigError, ValueError) as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg.log_json if log_json is None else log_json, level)
    daemon = Daemon(cfg, config_path=path, notifier=Notifier.from_environ())
    return await serve_daemon(daemon)


def run_daemon(config_path: Path | None, log_level: int | None = None) -> int:
    return uvloop.run(serve_config(config_path, log_level=log_level))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flotilla-daemon", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="daemon.toml path")
    parser.add_argument(
        "--log-level",
        choices=list(LEVELS),
        type=str.lower,
        help="default: FLOTILLA_LOG_LEVEL, else info",
    )
    args = parser.parse_args(argv)
    return run_daemon(args.config, None if args.log_level is None else LEVELS[args.log_level])


if __name__ == "__main__":
    sys.exit(main())
