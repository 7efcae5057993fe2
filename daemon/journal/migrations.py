"""Numbered migrations of the node journal's SQLite schema, applied in order at open.

Never edit a released migration: append a new one, and update `schema.sql` beside this file to match
(a test checks that the migrations end at that schema).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Awaitable, Callable

import aiosqlite

from schemas.codec import DecodeError, Decoder
from schemas.jobs import JobSpec
from schemas.subjects import parse_stored

_SPEC: Decoder[JobSpec] = Decoder(JobSpec)

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

# A job is named by (tenant, job_id): two tenants' jobs of one id are two rows. SQLite cannot
# change a primary key in place, so both tables are rebuilt; each old row's tenant comes from its
# stored subject, else its spec's JSON, else "" (tenant_of_row).
_V3_SQL = """
DROP INDEX jobs_active;
DROP INDEX jobs_finished;
DROP INDEX deliveries_seq;
ALTER TABLE jobs RENAME TO jobs_v2;
ALTER TABLE deliveries RENAME TO deliveries_v2;
CREATE TABLE jobs (
    tenant      TEXT    NOT NULL DEFAULT '',
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
    PRIMARY KEY (tenant, job_id, attempt)
);
CREATE INDEX jobs_active ON jobs (state) WHERE state IN ('received', 'running', 'paused');
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE deliveries (
    tenant         TEXT    NOT NULL DEFAULT '',
    job_id         TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    reply          TEXT    NOT NULL,
    alive_at       REAL    NOT NULL,
    terminal_event TEXT,
    settled_at REAL,
    PRIMARY KEY (tenant, job_id, attempt)
);
CREATE INDEX deliveries_seq ON deliveries (tenant, job_id, stream_seq)
    WHERE terminal_event IS NOT NULL;
"""
_V2_JOB_COLUMNS = (
    "job_id, attempt, stream_seq, subject, pool, priority, state, spec, error, scratch_dir, "
    "temp_paths, received_at, started_at, finished_at, updated_at"
)
_V3_COPY = f"""
INSERT INTO jobs (tenant, {_V2_JOB_COLUMNS})
SELECT COALESCE(t.tenant, ''), {", ".join("j." + c.strip() for c in _V2_JOB_COLUMNS.split(","))}
FROM jobs_v2 j LEFT JOIN temp.tenants t ON t.id = j.rowid;
INSERT INTO deliveries (tenant, job_id, attempt, stream_seq, reply, alive_at, terminal_event,
                        settled_at)
SELECT COALESCE(j.tenant, ''), d.job_id, d.attempt, d.stream_seq, d.reply, d.alive_at,
       d.terminal_event, d.settled_at
FROM deliveries_v2 d LEFT JOIN jobs j ON j.job_id = d.job_id AND j.attempt = d.attempt;
DROP TABLE jobs_v2;
DROP TABLE deliveries_v2;
DROP TABLE temp.tenants;
"""


def tenant_of_row(subject: str | None, spec: str | None) -> str:
    """An old row's tenant: its stored subject's, else its spec's (as the daemon reads it, so a
    body without one is JobSpec's default tenant), else ""."""
    if subject:
        with contextlib.suppress(ValueError):
            stored = parse_stored(subject).tenant
            if stored is not None:
                return stored
    if spec:
        with contextlib.suppress(DecodeError):
            return _SPEC.decode(spec).tenant
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            tenant = json.loads(spec).get("tenant")  # a spec this build no longer takes
            if isinstance(tenant, str):
                return tenant
    return ""


async def _v3(conn: aiosqlite.Connection) -> None:
    for statement in _statements(_V3_SQL):
        await conn.execute(statement)
    await conn.execute("CREATE TEMP TABLE tenants (id INTEGER PRIMARY KEY, tenant TEXT)")
    rows = await conn.execute_fetchall("SELECT rowid, subject, spec FROM jobs_v2")
    await conn.executemany(
        "INSERT INTO temp.tenants (id, tenant) VALUES (?, ?)",
        [(r[0], tenant_of_row(r[1], r[2])) for r in rows],
    )
    for statement in _statements(_V3_COPY):
        await conn.execute(statement)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]


#: Migration n (1-based) is MIGRATIONS[n - 1]: a script, or a step that runs its statements
#: itself (inside the migration's transaction) where SQL alone cannot say it.
Step = str | Callable[[aiosqlite.Connection], Awaitable[None]]
MIGRATIONS: tuple[Step, ...] = (_V1, _V2, _v3)
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
