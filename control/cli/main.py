"""`flotilla`: the one entry point for operators, producers and services.

Errors print as one line on stderr with a non-zero exit code that scripts can rely on:
1 the operation failed, 2 bad usage or input, 3 NATS or Postgres unreachable, 4 not found.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors

from common.configfile import ConfigError
from control.cli.flags import add_nats_flags
from control.errors import CliError
from schemas.codec import DecodeError

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_NOT_FOUND = 1, 2, 3, 4

Handler = Callable[[argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    from control.cli import commands as c

    parser = argparse.ArgumentParser(prog="flotilla", description=__doc__.splitlines()[0])
    parser.add_argument("--log-json", action="store_true", default=None, help="JSON log lines")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("schema", help="wire schemas")
    ssub = p.add_subparsers(dest="schema_cmd", required=True)
    e = ssub.add_parser("export", help="write one JSON Schema file per wire type")
    e.add_argument("dir", type=Path, nargs="?", default=Path("schemas/json"))
    e.set_defaults(handler=c.schema_export)

    p = sub.add_parser("nats", help="JetStream topology")
    nsub = p.add_subparsers(dest="nats_cmd", required=True)
    i = nsub.add_parser("init", help="create streams, consumers and the node bucket (idempotent)")
    add_nats_flags(i)
    i.add_argument("--config", type=Path, help="control.toml whose [topology] to apply")
    i.add_argument("--json", action="store_true")
    i.set_defaults(handler=c.nats_init)

    p = sub.add_parser("probe", help="print what this box can do (verified encoders, GPUs)")
    p.add_argument("--config", type=Path, default=os.environ.get("FLOTILLA_DAEMON_CONFIG"))
    p.add_argument("--json", action="store_true")
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
    p.set_defaults(handler=c.dev)

    p = sub.add_parser("control", help="run the control plane, or `control migrate`")
    p.add_argument("action", nargs="?", choices=["run", "migrate"], default="run")
    p.add_argument("--config", type=Path, default=Path("/etc/flotilla/control.toml"))
    p.set_defaults(handler=c.control)

    # Client commands (talk to the fleet API) register themselves, one module per area.
    from control.cli import jobs as cli_jobs
    from control.cli import keys as cli_keys
    from control.cli import nodes as cli_nodes

    cli_jobs.register(sub)
    cli_nodes.register(sub)
    cli_keys.register(sub)
    from control.devstack.chaos import cli as cli_chaos

    cli_chaos.register(sub)
    return parser


def run_async(coro: Awaitable[int]) -> int:
    import uvloop

    async def wrapped() -> int:
        return await coro

    return uvloop.run(wrapped())


def main(argv: list[str] | None = None) -> int:
    from control.cli.jobflags import submit_argv

    parser = build_parser()
    # `submit FILE` and `submit OPERATION …` share one subparser: see submit_argv.
    args = parser.parse_args(submit_argv(sys.argv[1:] if argv is None else list(argv)))
    import logging

    from common.logs import setup_logging

    service = args.command in ("daemon", "control", "dev")
    # Services log structured lines; operator commands print results and keep logs to problems.
    setup_logging(
        args.log_json if service else bool(args.log_json),
        logging.INFO if service else logging.ERROR,
    )
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


def _fail(message: str, code: int) -> int:
    print(f"flotilla: error: {message}", file=sys.stderr)
    return code


def entry() -> Any:  # pragma: no cover - console script shim
    sys.exit(main())
