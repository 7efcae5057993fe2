"""Apply the numbered SQL migrations in order, once, even with several instances starting at once.

All pending migrations run in one transaction under a transaction-scoped advisory lock: a second
instance waits for the first, then finds nothing left to do. Applied versions are recorded in
`schema_migrations`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger("flotilla.db")

_FILE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
#: Any constant shared by every instance; "Flot" in ASCII.
LOCK_KEY = 0x466C6F74

CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The migration files are inconsistent (a duplicate or malformed version number)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations() -> list[Migration]:
    """Every `NNNN_name.sql` under control/db/migrations, sorted by version (blocking I/O)."""
    found: dict[int, Migration] = {}
    for entry in resources.files("control.db.migrations").iterdir():
        match = _FILE.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file {entry.name!r} is not NNNN_name.sql")
            continue
        version = int(match.group(1))
        if version in found:
            raise MigrationError(f"two migrations with version {version}")
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def _apply(conn: asyncpg.Connection, migrations: list[Migration]) -> list[int]:
    applied: list[int] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
        await conn.execute(CREATE_TABLE)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        newer = done - {m.version for m in migrations}
        if newer:
            # A rolling upgrade can run an older build against a newer (additive) schema.
            log.warning("database has migrations this build does not know: %s", sorted(newer))
        for m in migrations:
            if m.version in done:
                continue
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name
            )
            applied.append(m.version)
    if applied:
        log.info("applied migrations %s", applied)
    return applied


async def migrate(target: str | asyncpg.Pool | asyncpg.Connection) -> list[int]:
    """Bring the database at `target` (a DSN, pool or connection) up to date.

    Returns the versions applied by this call; `[]` when it was already up to date.
    """
    migrations = await asyncio.to_thread(load_migrations)
    if isinstance(target, str):
        conn = await asyncpg.connect(target)
        try:
            return await _apply(conn, migrations)
        finally:
            await conn.close()
    if isinstance(target, asyncpg.Pool):
        async with target.acquire() as pooled:
            return await _apply(pooled, migrations)
    return await _apply(target, migrations)
