"""Open the journal's SQLite file safely: integrity check, quarantine of a corrupt file, pragmas."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import aiosqlite

log = logging.getLogger("flotilla.journal")

#: The WAL is truncated back to this size after checkpoints (it never shrinks otherwise).
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
BUSY_TIMEOUT_MS = 5000
#: Primary result codes meaning "the file itself is damaged" (not "locked" or "busy").
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


class JournalCorrupt(Exception):
    """quick_check failed or SQLite reported a damaged file."""


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in _CORRUPT_CODES


async def _connect(path: Path) -> aiosqlite.Connection:
    # isolation_level=None: the journal issues BEGIN IMMEDIATE/COMMIT itself.
    conn = await aiosqlite.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    return conn


async def _check(conn: aiosqlite.Connection) -> None:
    try:
        await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        rows = list(await conn.execute_fetchall("PRAGMA quick_check(10)"))
    except sqlite3.Error as exc:
        if _is_corruption(exc):
            raise JournalCorrupt(str(exc)) from exc
        raise
    problems = [str(r[0]) for r in rows]
    if problems != ["ok"]:
        raise JournalCorrupt("; ".join(problems))


async def _configure(conn: aiosqlite.Connection) -> None:
    cursor = await conn.execute("PRAGMA journal_mode = WAL")
    row = await cursor.fetchone()
    if row is None or str(row[0]).lower() != "wal":
        raise RuntimeError(f"journal could not switch to WAL mode (got {row and row[0]!r})")
    await conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
    await conn.execute("PRAGMA synchronous = NORMAL")


def _quarantine(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    # The WAL and shm belong to the damaged file: a fresh journal must never replay them.
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.rename(target.with_name(target.name + suffix))
    path.rename(target)
    return target


async def open_connection(path: Path) -> tuple[aiosqlite.Connection, Path | None]:
    """The writer connection, and where a corrupt file was moved aside (None if none was)."""
    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    quarantined: Path | None = None
    conn = await _connect(path)
    try:
        await _check(conn)
    except JournalCorrupt as exc:
        await conn.close()
        quarantined = await asyncio.to_thread(_quarantine, path)
        log.critical(
            "JOURNAL CORRUPT: %s failed its integrity check (%s); moved aside to %s and "
            "starting an empty journal. Jobs it held will be redelivered by JetStream.",
            path,
            exc,
            quarantined,
        )
        conn = await _connect(path)
    try:
        await _configure(conn)
    except BaseException:
        await conn.close()
        raise
    return conn, quarantined
