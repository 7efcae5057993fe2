"""A fresh database per use, cloned from the session's migrated template and dropped after; and
an empty one brought to where an older release left it."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator

import asyncpg

from control.db.migrate import CREATE_TABLE, load_migrations
from control.devstack.stack import ExternalPostgres, PostgresServer


@contextlib.asynccontextmanager
async def fresh_database(
    pg_server: PostgresServer | ExternalPostgres, template: str
) -> AsyncIterator[str]:
    """Its URL; the embedded server is started first, in case a test left it stopped."""
    if isinstance(pg_server, PostgresServer):
        await pg_server.start()
    name = "t_" + secrets.token_hex(6)
    await pg_server.create_database(name, template=template)
    try:
        yield pg_server.dsn(name)
    finally:
        await pg_server.drop_database(name)


async def migrated_before(dsn: str, version: int) -> None:
    """The empty database at `dsn` as a release that stopped short of migration `version`
    left it: every earlier migration applied and recorded, none after."""
    older = [m for m in await asyncio.to_thread(load_migrations) if m.version < version]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(CREATE_TABLE)
        for m in older:
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
    finally:
        await conn.close()
