"""Numbered migrations of the node journal's SQLite schema, applied in order at open.

Never edit a released migration: append a new one, and update `schema.sql` beside this file to match
(a test checks that the migrations end at that schema).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Awaitable, Callable

import aiosqlite

from daemon.journal.migration_v3 import migrate_v3

_V1 = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE jobs (
    job_id      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    stream_seq  INTEGER,
    subject     TEXT,
    pool        TEXT,
    priority    TEXT,
    state       TEXT    NOT NULL CHECK (state IN (
                    'received', 'running', 'paused', 'succeeded', 'failed', 'cancelled',
                    'handed_back', 'interrupted', 'retrying')),
    spec        TEXT,
    error       TEXT,
    scratch_dir TEXT,
    temp_paths  TEXT    NOT NULL DEFAULT '[]',
    received_at REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX jobs_active ON jobs (state) WHERE state IN ('received', 'running', 'paused');
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    subject    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    kind       TEXT    NOT NULL,
    terminal   INTEGER NOT NULL DEFAULT 0,
    created_at REAL    NOT NULL,
    sent_at    REAL
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_unsent_kind ON outbox (kind, seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
"""

# The JetStream delivery behind each attempt: its ack subject (a restarted daemon naks it to hand
# the job back at once), when JetStream last confirmed it still held the message for us, the
# attempt's terminal event (a redelivery of a finished job re-sends it instead of running again)
# and when the node settled the message (ack, nak, term; or a restart's nak).
_V2 = """
CREATE TABLE deliveries (
    job_id         TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    reply          TEXT    NOT NULL,
    alive_at       REAL    NOT NULL,
    terminal_event TEXT,
    settled_at REAL,
    PRIMARY KEY (job_id, attempt)
);
CREATE INDEX deliveries_seq ON deliveries (job_id, stream_seq) WHERE terminal_event IS NOT NULL;
"""

#: Migration n (1-based) is MIGRATIONS[n - 1]: a script, or a step that runs its statements
#: itself (inside the migration's transaction) where SQL alone cannot say it.
Step = str | Callable[[aiosqlite.Connection], Awaitable[None]]
MIGRATIONS: tuple[Step, ...] = (_V1, _V2, migrate_v3)
SCHEMA_VERSION = len(MIGRATIONS)

_SET_VERSION = (
    "INSERT INTO meta (key, value) VALUES ('schema_version', '{n}') "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value;"
)


class JournalVersionError(RuntimeError):
    """The journal was written by a newer build; refusing to touch it."""


async def schema_version(conn: aiosqlite.Connection) -> int:
    try:
        cursor = await conn.execute("SELECT value FROM meta WHERE key = 'schema_version'")
    except sqlite3.OperationalError:  # no meta table: an empty file
        return 0
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: aiosqlite.Connection, *, upto: int = SCHEMA_VERSION) -> int:
    """Apply the missing migrations, each in its own transaction; returns the version reached."""
    current = await schema_version(conn)
    if current > SCHEMA_VERSION:
        raise JournalVersionError(
            f"journal schema v{current} is newer than this build's v{SCHEMA_VERSION}"
        )
    for n in range(current + 1, upto + 1):
        step = MIGRATIONS[n - 1]
        try:
            if isinstance(step, str):
                # executescript commits any open transaction first, so the script carries its own.
                await conn.executescript(
                    f"BEGIN IMMEDIATE;\n{step}\n{_SET_VERSION.format(n=n)}\nCOMMIT;"
                )
            else:
                await conn.execute("BEGIN IMMEDIATE")
                await step(conn)
                await conn.execute(_SET_VERSION.format(n=n).rstrip(";"))
                await conn.execute("COMMIT")
        except sqlite3.Error:
            with contextlib.suppress(sqlite3.Error):
                await conn.execute("ROLLBACK")
            raise
        current = n
    return current
