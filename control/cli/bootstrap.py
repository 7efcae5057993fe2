"""`flotilla keys bootstrap`: the first operator key, made straight in Postgres.

Every key command goes through the API with an operator key, so the first one cannot: this
talks to the database the control plane uses (migrating it first, so it works before the
control plane has ever run). It refuses while an active operator key exists, unless --force
(for a lost key: revoke the old one afterwards).
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from control.cli.apiclient import open_nats
from control.cli.context import Target, load_context, resolve
from control.cli.format import print_created
from control.errors import BadInput, CliError, Unreachable
from schemas import api

if TYPE_CHECKING:
    import asyncpg

#: Two bootstraps at once make one key: they queue on this transaction lock ("FlBs").
LOCK_KEY = 0x466C4273
_TENANT = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a job's tenant is a subject-safe token


def add_bootstrap(ksub: Any) -> None:
    b = ksub.add_parser("bootstrap", help="the first operator key, straight in Postgres")
    b.add_argument(
        "--db-url", default=os.environ.get("FLOTILLA_CONTROL_DATABASE_URL") or None,
        help="Postgres DSN (env FLOTILLA_CONTROL_DATABASE_URL; default: --config's "
        "database_url, else the dev fleet's)",
    )  # fmt: skip
    b.add_argument("--config", type=Path, help="control.toml whose database_url to use")
    b.add_argument(
        "--context", default=os.environ.get("FLOTILLA_CONTEXT") or None, metavar="NAME|FILE",
        help="the dev fleet context whose database to use (default: the current one)",
    )  # fmt: skip
    b.add_argument("--tenant", default="operators", help="tenant of the key (made if missing)")
    b.add_argument("--name", default="bootstrap", help="what the key is for")
    b.add_argument("--force", action="store_true", help="even if an operator key exists")
    b.add_argument("--json", action="store_true", help="one JSON document on stdout")
    b.set_defaults(handler=bootstrap)


async def database_url(args: argparse.Namespace) -> str:
    if args.db_url:
        return str(args.db_url)
    if args.config is not None:
        from control.config import load_control_config

        return load_control_config(args.config, required=True).database_url
    ctx = load_context(getattr(args, "context", None))
    url = None if ctx is None else ctx.get("database_url")
    if ctx is None or not url:
        raise BadInput("no database: give --db-url or --config (or run `flotilla dev`)")
    # The context's database is trusted only while its fleet answers as itself.
    target = resolve(args)
    await (await open_nats(Target(target.settings, ctx))).close()
    return url


async def make_operator_key(
    conn: asyncpg.Connection, tenant: str, name: str, force: bool
) -> tuple[str, api.KeyInfo]:
    from control.api.keys import active_operator_keys, insert_key

    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        existing = await active_operator_keys(conn)
        if existing and not force:
            raise CliError(
                f"{existing} active operator key(s) exist: create more with one of them "
                "(`flotilla keys create --operator`), or pass --force"
            )
        await conn.execute(
            "INSERT INTO tenants (tenant, webhook_secret) VALUES ($1, $2)"
            " ON CONFLICT (tenant) DO NOTHING",
            tenant,
            secrets.token_hex(32),
        )
        return await insert_key(conn, tenant, role="operator", name=name)


async def bootstrap(args: argparse.Namespace) -> int:
    # Here, not at the top: the `flotilla` of a daemon-only install has no Postgres driver.
    import asyncpg

    from control.db.migrate import migrate

    if _TENANT.fullmatch(args.tenant) is None:
        raise BadInput(f"--tenant {args.tenant!r}: letters, digits, '-' and '_' only")
    url = await database_url(args)
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
        raise Unreachable(f"cannot reach Postgres: {exc}") from exc
    try:
        await migrate(conn)
        key, info = await make_operator_key(conn, args.tenant, args.name, args.force)
    finally:
        await conn.close()
    print_created(api.KeyCreated(key=key, info=info), args.json)
    return 0
