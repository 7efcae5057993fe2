"""Journal schema version 3: a job is named by (tenant, job_id).

Two tenants' jobs of one id are two rows. SQLite cannot change a primary key in place, so the jobs
and deliveries tables are rebuilt; each old row's tenant comes from its stored subject, else its
spec, else "" (tenant_of_row), which SQL alone cannot read, hence a step in Python.
"""

from __future__ import annotations

import contextlib
import json

import aiosqlite

from schemas.codec import DecodeError, Decoder
from schemas.jobs import JobSpec
from schemas.subjects import parse_stored

_SPEC: Decoder[JobSpec] = Decoder(JobSpec)

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


async def migrate_v3(conn: aiosqlite.Connection) -> None:
    """Runs inside the migration's transaction (daemon.journal.migrations.migrate)."""
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
