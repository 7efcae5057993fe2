"""Create and drop databases on a PostgreSQL server given by URL (embedded or external)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

import asyncpg

#: Names we create are plain lowercase identifiers, so quoting is all the escaping they need.
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: The maintenance database every server has; CREATE DATABASE runs from there.
ADMIN_DB = "postgres"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a plain database name: {name!r}")
    return f'"{name}"'


def dsn_for(url: str, dbname: str) -> str:
    """`url` with its database replaced by `dbname` (user, host, port and query kept)."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


async def create_database(url: str, name: str, template: str | None = None) -> None:
    sql = f"CREATE DATABASE {check_name(name)}"
    if template is not None:
        sql += f" TEMPLATE {check_name(template)}"
    conn = await asyncpg.connect(dsn_for(url, ADMIN_DB))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def drop_database(url: str, name: str) -> None:
    """Drop `name` if it exists, ending sessions still connected to it (a test's leftovers)."""
    conn = await asyncpg.connect(dsn_for(url, ADMIN_DB))
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {check_name(name)} WITH (FORCE)")
    finally:
        await conn.close()


class ExternalPostgres:
    """A server we did not start, known by URL; offers the same calls as `PostgresServer`."""

    def __init__(self, url: str) -> None:
        self.url = url

    def dsn(self, dbname: str = ADMIN_DB) -> str:
        return dsn_for(self.url, dbname)

    async def create_database(self, name: str, template: str | None = None) -> None:
        await create_database(self.url, name, template)

    async def drop_database(self, name: str) -> None:
        await drop_database(self.url, name)
