"""The connection flags every fleet command shares (each also read from the environment).

They follow the `nats` CLI (natscli): `--user/--password`, `--nkey`, `--creds`, `--tlsca`,
`--tlscert/--tlskey`, `--inbox-prefix`; each has a FLOTILLA_NATS_* variable. They fill the same
fields as the `[nats]` table of daemon.toml and control.toml (common.natsconn.NatsSettings).
"""

from __future__ import annotations

import argparse
import os

#: flag dest -> (environment variable, NatsSettings field or None for others).
NATS_ENV = {
    "nats_url": "FLOTILLA_NATS_URL",
    "user": "FLOTILLA_NATS_USER",
    "password": "FLOTILLA_NATS_PASSWORD",
    "nkey": "FLOTILLA_NATS_NKEY",
    "creds": "FLOTILLA_NATS_CREDS",
    "tlsca": "FLOTILLA_NATS_TLSCA",
    "tlscert": "FLOTILLA_NATS_TLSCERT",
    "tlskey": "FLOTILLA_NATS_TLSKEY",
    "inbox_prefix": "FLOTILLA_NATS_INBOX_PREFIX",
    "prefix": "FLOTILLA_PREFIX",
    "context": "FLOTILLA_CONTEXT",
}


def _env(dest: str) -> str | None:
    return os.environ.get(NATS_ENV[dest]) or None


def add_nats_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (flags win over FLOTILLA_* variables, then the context)")
    g.add_argument(
        "--nats-url", "--server", "-s", dest="nats_url", default=_env("nats_url"), metavar="URL",
        help="NATS server URL(s), comma-separated (env FLOTILLA_NATS_URL; default: the "
        "context's, else nats://127.0.0.1:4222)",
    )  # fmt: skip
    g.add_argument(
        "--context", default=_env("context"), metavar="NAME|FILE",
        help="the fleet context to use: a name `flotilla dev --context` wrote, or a file "
        "(env FLOTILLA_CONTEXT; default: the current one)",
    )  # fmt: skip
    g.add_argument("--user", default=_env("user"), help="NATS user (env FLOTILLA_NATS_USER)")
    g.add_argument(
        "--password", default=_env("password"),
        help="password of --user (env FLOTILLA_NATS_PASSWORD, which keeps it out of `ps`)",
    )  # fmt: skip
    g.add_argument(
        "--nkey", default=_env("nkey"), metavar="FILE",
        help="NKey seed file (env FLOTILLA_NATS_NKEY)",
    )  # fmt: skip
    g.add_argument(
        "--creds", default=_env("creds"), metavar="FILE",
        help="NATS credentials (.creds) file (env FLOTILLA_NATS_CREDS)",
    )  # fmt: skip
    g.add_argument(
        "--tlsca", default=_env("tlsca"), metavar="FILE",
        help="CA bundle that verifies the server; turns TLS on (env FLOTILLA_NATS_TLSCA)",
    )  # fmt: skip
    g.add_argument(
        "--tlscert", default=_env("tlscert"), metavar="FILE",
        help="client certificate for mutual TLS (env FLOTILLA_NATS_TLSCERT)",
    )  # fmt: skip
    g.add_argument(
        "--tlskey", default=_env("tlskey"), metavar="FILE",
        help="private key of --tlscert (env FLOTILLA_NATS_TLSKEY)",
    )  # fmt: skip
    g.add_argument(
        "--inbox-prefix", default=_env("inbox_prefix"), metavar="PREFIX",
        help="reply inbox prefix, for a user that may only hear its own, e.g. _INBOX_<user> "
        "(env FLOTILLA_NATS_INBOX_PREFIX)",
    )  # fmt: skip
    g.add_argument(
        "--prefix", default=_env("prefix"),
        help="subject prefix (env FLOTILLA_PREFIX; default: the context's, else flotilla)",
    )  # fmt: skip


def add_client_flags(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    """Flags of every command that talks to the fleet API."""
    add_nats_flags(p)
    p.add_argument(
        "--api-key",
        default=os.environ.get("FLOTILLA_API_KEY") or None,
        help="API key, a tenant's or an operator's (env FLOTILLA_API_KEY)",
    )
    if json_flag:
        add_json_flag(p)


def add_json_flag(p: argparse.ArgumentParser, text: str = "one JSON document on stdout") -> None:
    p.add_argument("--json", action="store_true", help=text)
