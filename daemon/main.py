"""`flotilla daemon --config PATH` and `python -m daemon.main --config PATH`: run one daemon.

Signals: the first SIGTERM (or SIGINT) drains, a second forces; SIGHUP reloads the config.
Exit status: 0 after a clean stop, 1 when a supervised task crashed for good, 2 when NATS closed
for good.
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
from common.logs import setup_logging
from common.sdnotify import Notifier
from daemon.app import Daemon
from daemon.config import load_daemon_config

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


async def serve_config(config_path: Path | str | None) -> int:
    """Load the config and run the daemon until it stops; the exit status as the result."""
    path = Path(config_path) if config_path is not None else None
    try:
        cfg = load_daemon_config(path, required=path is not None)
    except ConfigError as exc:
        print(f"flotilla daemon: {exc}", file=sys.stderr)
        return 78  # EX_CONFIG: systemd's RestartPreventExitStatus can name it
    setup_logging(cfg.log_json)
    daemon = Daemon(cfg, config_path=path, notifier=Notifier.from_environ())
    return await serve_daemon(daemon)


def run_daemon(config_path: Path | None) -> int:
    return uvloop.run(serve_config(config_path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flotilla-daemon", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="daemon.toml path")
    args = parser.parse_args(argv)
    return run_daemon(args.config)


if __name__ == "__main__":
    sys.exit(main())
