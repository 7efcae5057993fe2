"""Write a batch of events to Postgres and fold the new job events into `jobs`.

`store_batch` runs inside the caller's transaction: COPY into a staging table, one
`INSERT … SELECT … ON CONFLICT (event_id) DO NOTHING`, then only the events that were really
new are folded, so a replayed or duplicated event changes nothing. A job is named by (tenant,
job_id); events of nodes that predate the tenant field get theirs first
(control/db/blanktenant.py). Job rows are locked in key order before folding, so concurrent
batches touching the same job serialise instead of losing an update. Node events are kept as
they came; node state is the node tracker's (control/nodes.py).
Before any of it, a job event from a node that does not hold its attempt (control/db/holders.py)
is taken out of the batch and kept in `rejected_events` instead: it changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeGuard

import asyncpg
import msgspec

from control.db import holders, queries
from control.db.blanktenant import fill_tenants
from control.db.holders import Rejection
from control.db.incoming import BadMessage as BadMessage
from control.db.incoming import Incoming as Incoming
from control.fold import FOLD_COLUMNS, JobRow, at, fold_job
from schemas.events import Accepted, Event, JobEvent, is_job_event, kind_of
from schemas.jobs import JobSpec


@dataclass(slots=True)
class StoreResult:
    inserted: int = 0
    duplicates: int = 0
    jobs_changed: int = 0
    #: Events refused (their node does not hold the attempt) and recorded for the first time.
    rejected: list[Rejection] = field(default_factory=list)
    #: The job events stored for the first time by this batch (a replay or duplicate is not).
    fresh: list[Incoming] = field(default_factory=list)


def _is_job(ev: Event) -> TypeGuard[JobEvent]:
    return is_job_event(ev)


def _stage_row(item: Incoming) -> tuple[object, ...]:
    ev = item.event
    tenant, job_id, attempt = (ev.tenant, ev.job_id, ev.attempt) if _is_job(ev) else (None, None, 0)
    return (ev.event_id, tenant, job_id, kind_of(ev), ev.node_id, attempt, at(ev.ts), item.body,
            item.stream_seq)  # fmt: skip


async def store_batch(
    conn: asyncpg.Connection, items: Sequence[Incoming], bad: Sequence[BadMessage] = ()
) -> StoreResult:
    """Insert `items` idempotently and fold the new ones; the caller owns the transaction."""
    result = StoreResult()
    unique = await fill_tenants(conn, list({i.event.event_id: i for i in items}.values()))
    refused = await holders.check(conn, unique)
    if refused:
        result.rejected = await holders.record(conn, refused)
        out = {r.event.event_id for r in refused}
        unique = [i for i in unique if i.event.event_id not in out]
    if unique:
        await conn.execute(queries.STAGE_TABLES)
        await conn.copy_records_to_table(
            "ingest_stage",
            records=[_stage_row(i) for i in unique],
            columns=queries.STAGE_EVENT_COLUMNS,
        )
        new_ids = {r["event_id"] for r in await conn.fetch(queries.INSERT_EVENTS)}
        fresh = [i.event for i in unique if i.event.event_id in new_ids]
        result.fresh = [i for i in unique if i.event.event_id in new_ids and _is_job(i.event)]
        result.inserted = len(fresh)
        result.duplicates = len(items) - len(fresh) - len(refused)
        job_events = [e for e in fresh if _is_job(e)]
        result.jobs_changed = await fold_jobs(conn, job_events)
        await keep_specs(conn, job_events)
    if bad:
        await conn.executemany(
            queries.INSERT_BAD_EVENT,
            [(b.stream_seq, b.subject, b.error.replace("\x00", ""), b.payload) for b in bad],
        )
    return result


async def fold_jobs(conn: asyncpg.Connection, events: Sequence[JobEvent]) -> int:
    """Fold new job events into their rows; returns how many rows changed."""
    if not events:
        return 0
    by_job: dict[tuple[str, str], list[JobEvent]] = defaultdict(list)
    for ev in events:
        by_job[ev.tenant, ev.job_id].append(ev)
    keys = sorted(by_job)
    tenants, job_ids = [k[0] for k in keys], [k[1] for k in keys]
    first_seen: list[datetime] = [at(min(e.ts for e in by_job[k])) for k in keys]
    await conn.execute(queries.INSERT_JOB_PLACEHOLDERS, tenants, job_ids, first_seen)
    changed: list[JobRow] = []
    for record in await conn.fetch(queries.LOCK_JOBS, tenants, job_ids):
        row = JobRow(**dict(record))
        if fold_job(row, by_job[row.tenant, row.job_id]):
            changed.append(row)
    if changed:
        await conn.execute(queries.STAGE_TABLES)
        await conn.copy_records_to_table(
            "jobs_stage",
            records=[tuple(getattr(r, c) for c in FOLD_COLUMNS) for r in changed],
            columns=FOLD_COLUMNS,
        )
        await conn.execute(queries.UPDATE_JOBS_FROM_STAGE)
    return len(changed)


async def keep_specs(conn: asyncpg.Connection, events: Sequence[JobEvent]) -> None:
    """Store the spec `accepted` events carry for jobs that have none; the rows are locked."""
    specs = {
        (e.tenant, e.job_id): msgspec.json.encode(e.spec).decode()
        for e in events
        if isinstance(e, Accepted)
        and e.spec is not None
        and (e.spec.tenant, e.spec.job_id) == (e.tenant, e.job_id)
    }
    if specs:
        keys = list(specs)
        await conn.execute(
            queries.SET_MISSING_SPECS,
            [k[0] for k in keys],
            [k[1] for k in keys],
            list(specs.values()),
        )


async def record_submission(
    conn: asyncpg.Connection,
    spec: JobSpec,
    *,
    submitted_at: datetime,
    stream_seq: int | None = None,
    queued_at: datetime | None = None,
) -> None:
    """Record a job as submitted with its spec (the API on submit, or a dead letter read from
    the jobs stream); a job already further along keeps its state."""
    await conn.execute(
        queries.UPSERT_SUBMITTED,
        spec.job_id,
        spec.tenant,
        spec.pool,
        spec.priority,
        spec.operation_name,
        stream_seq,
        submitted_at,
        queued_at,
        msgspec.json.encode(spec).decode(),
    )
