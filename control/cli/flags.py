"""The connection flags every fleet command shares (each also read from the environment)."""

from __future__ import annotations

import argparse
import os


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def add_nats_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nats-url",
        default=_env("FLOTILLA_NATS_URL"),
        help="NATS server URL(s), comma-separated (env FLOTILLA_NATS_URL; default: the dev "
        "fleet's context file, else nats://127.0.0.1:4222)",
    )
    p.add_argument(
        "--creds",
        default=_env("FLOTILLA_NATS_CREDS"),
        help="NATS credentials file (env FLOTILLA_NATS_CREDS)",
    )
    p.add_argument(
        "--prefix",
        default=_env("FLOTILLA_PREFIX"),
        help="subject prefix (env FLOTILLA_PREFIX; default flotilla)",
    )


def add_client_flags(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """Flags of every command that talks to the fleet API."""
    add_nats_flags(p)
    p.add_argument(
        "--api-key",
        default=_env("FLOTILLA_API_KEY"),
        help="API key, a tenant's or an operator's (env FLOTILLA_API_KEY)",
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")
