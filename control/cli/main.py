"""`flotilla`: the one entry point for operators, producers and services.

Errors print as one line on stderr (`flotilla: error: …`), never a traceback, with an exit code
scripts can rely on: 1 the operation failed or was refused, 2 bad usage, input or configuration,
3 NATS or Postgres unreachable (or not the fleet the context names), 4 not found; the services
(`daemon`, `control`) exit 78 on a config they cannot use. Results go to stdout and logs to
stderr, so `--json` output is never mixed with log lines.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn

import msgspec
import nats.errors

from common.configfile import ConfigError
from common.logs import LEVEL_ENV, LEVELS, env_level, error_line, parse_level, setup_logging
from control.cli.flags import add_json_flag, add_nats_flags
from control.errors import CliError, missing_extra
from schemas.codec import DecodeError

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 1, 2, 3, 4
#: Commands that run as services: they log at info by default, the others at error.
SERVICES = ("daemon", "control", "dev")

Handler = Callable[[argparse.Namespace], Awaitable[int]]
log = logging.getLogger("flotilla.cli")


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as the one line every other error is: no usage dump."""

    def error(self, message: str) -> NoReturn:
        where = self.prog.removeprefix("flotilla").strip()
        see = f"flotilla {where} --help" if where else "flotilla --help"
        self.exit(
            EXIT_USAGE, error_line(f"{where + ': ' if where else ''}{message} (see `{see}`)\n")
        )


def package_version() -> str:
    """The installed distribution's version; from a source tree, the version it declares."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flotilla-fleet")
    except PackageNotFoundError:
        from common.version import VERSION

        return f"{VERSION} (not installed: the source tree's common/version.py)"


def _level(text: str) -> str:
    try:
        parse_level(text, "level")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip().lower()


def add_log_flags(p: argparse.ArgumentParser, *, top: bool) -> None:
    """`--log-level` and `--log-json`, before the command or after it (the later one wins)."""
    default = None if top else argparse.SUPPRESS
    p.add_argument(
        "--log-level", type=_level, choices=list(LEVELS), default=default, metavar="LEVEL",
        help=f"{', '.join(LEVELS)} (env {LEVEL_ENV}; default: info for services, else error); "
        "logs go to stderr",
    )  # fmt: skip
    p.add_argument(
        "--log-json", action="store_true", default=default,
        help="JSON log lines (default: JSON under systemd or when stderr is not a terminal, "
        "for services)",
    )  # fmt: skip


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found.extend(_walk(child))
    return found


def build_parser() -> argparse.ArgumentParser:
    from control.cli import commands as c

    parser = Parser(prog="flotilla", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version", action="version", version=f"flotilla {package_version()}",
        help="print the version and exit",
    )  # fmt: skip
    add_log_flags(parser, top=True)
    # Any: the registering modules take the plain ArgumentParser's subparsers action.
    sub: Any = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schema", help="wire schemas")
    ssub = p.add_subparsers(dest="schema_cmd", required=True)
    e = ssub.add_parser("export", help="write one JSON Schema file per wire type")
    e.add_argument("dir", type=Path, nargs="?", default=Path("schemas/json"))
    add_json_flag(e, 'one JSON document on stdout: {"written": [paths]}')
    e.set_defaults(handler=c.schema_export)

    p = sub.add_parser("nats", help="JetStream topology")
    nsub = p.add_subparsers(dest="nats_cmd", required=True)
    i = nsub.add_parser("init", help="create streams, consumers and the node bucket (idempotent)")
    add_nats_flags(i)
    i.add_argument("--config", type=Path, help="control.toml whose [topology] to apply")
    i.add_argument(
        "--renew-node-bucket",
        action="store_true",
        help="re-create a node bucket that fsyncs every heartbeat (its nodes read offline "
        "until their next beat)",
    )
    add_json_flag(i)
    i.set_defaults(handler=c.nats_init)

    p = sub.add_parser("probe", help="print what this box can do (verified encoders, GPUs)")
    p.add_argument("--config", type=Path, default=os.environ.get("FLOTILLA_DAEMON_CONFIG"))
    add_json_flag(p)
    p.set_defaults(handler=c.probe)

    p = sub.add_parser("daemon", help="run the edge daemon (systemd service)")
    p.add_argument("--config", type=Path, default=Path("/etc/flotilla/daemon.toml"))
    p.set_defaults(handler=c.daemon)

    p = sub.add_parser("dev", help="run the whole fleet on this machine (embedded defaults)")
    p.add_argument("--nodes", type=int, default=2, help="number of daemons (default 2)")
    p.add_argument("--data", type=Path, default=Path(".devdata"), help="data directory")
    p.add_argument(
        "--root", type=Path, action="append", default=[], help="media root daemons may use"
    )
    p.add_argument(
        "--context", default="dev", metavar="NAME",
        help="name of the context written for this fleet, made the current one (default dev)",
    )  # fmt: skip
    p.set_defaults(handler=c.dev)

    p = sub.add_parser("control", help="run the control plane, or `control migrate`")
    p.add_argument("action", nargs="?", choices=["run", "migrate"], default="run")
    p.add_argument("--config", type=Path, default=Path("/etc/flotilla/control.toml"))
    add_json_flag(p, "with `migrate`: one JSON document on stdout")
    p.set_defaults(handler=c.control)

    # Client commands (talk to the fleet API) register themselves, one module per area.
    from control.cli import completion as cli_completion
    from control.cli import jobs as cli_jobs
    from control.cli import keys as cli_keys
    from control.cli import nodes as cli_nodes
    from control.cli import workflows as cli_workflows

    cli_jobs.register(sub)
    cli_nodes.register(sub)
    from control.cli import nodewindows as cli_windows

    cli_windows.register(sub)
    cli_keys.register(sub)
    cli_workflows.register(sub)
    from control.devstack.chaos import cli as cli_chaos

    cli_chaos.register(sub)
    from control.sim import cli as cli_sim

    cli_sim.register(sub)
    cli_completion.register(sub, build_parser)
    for child in _walk(parser)[1:]:
        add_log_flags(child, top=False)
    return parser


def run_async(coro: Awaitable[int]) -> int:
    import uvloop

    async def wrapped() -> int:
        return await coro

    return uvloop.run(wrapped())


def _setup_logs(args: argparse.Namespace) -> None:
    service = args.command in SERVICES
    default = logging.INFO if service else logging.ERROR
    level = env_level(default) if args.log_level is None else LEVELS[args.log_level]
    args.log_level_no = level
    # Services log structured lines; operator commands print results and keep logs to problems.
    setup_logging(args.log_json if service else bool(args.log_json), level)


def main(argv: list[str] | None = None) -> int:
    from control.cli.jobflags import submit_argv

    parser = build_parser()
    # `submit FILE` and `submit OPERATION …` share one subparser: see submit_argv.
    args = parser.parse_args(submit_argv(sys.argv[1:] if argv is None else list(argv)))
    try:
        _setup_logs(args)
    except ValueError as exc:  # FLOTILLA_LOG_LEVEL names no level
        if args.command in ("daemon", "control"):
            return _fail(str(exc), 78)
        return _fail(str(exc), EXIT_USAGE)
    handler: Handler = args.handler
    try:
        return run_async(handler(args))
    except KeyboardInterrupt:
        return 130
    except CliError as exc:
        return _fail(str(exc), exc.exit_code)
    except (ConfigError, DecodeError, msgspec.ValidationError, ValueError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (nats.errors.NoServersError, ConnectionRefusedError, OSError) as exc:
        return _fail(f"cannot reach the server: {exc}", EXIT_UNREACHABLE)
    except (TimeoutError, nats.errors.TimeoutError):
        return _fail("timed out waiting for a reply", EXIT_UNREACHABLE)
    except nats.errors.Error as exc:
        return _fail(f"NATS: {str(exc).removeprefix('nats: ')}", EXIT_FAILED)
    except ModuleNotFoundError as exc:
        hint = missing_extra(exc.name or "")
        if hint is None:
            log.debug("unexpected error", exc_info=True)
        return _fail(hint or f"missing module {exc.name} (--log-level debug shows where)", 1)
    except Exception as exc:  # a bug: still one line; the traceback at --log-level debug
        log.debug("unexpected error", exc_info=True)
        return _fail(
            f"unexpected {type(exc).__name__}: {exc} (--log-level debug shows where)", EXIT_FAILED
        )


def _fail(message: str, code: int) -> int:
    print(error_line(message), file=sys.stderr)
    return code


def entry() -> Any:  # pragma: no cover - console script shim
    sys.exit(main())
