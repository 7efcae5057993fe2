"""A fresh database per use, cloned from the session's migrated template and dropped after."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

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
