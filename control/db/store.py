"""Write a batch of events to Postgres and fold the new job events into `jobs`.

`store_batch` runs inside the caller's transaction, in a handful of statements whatever the
batch's size: lock the rows of the batch's jobs (in key order, so concurrent batches touching
the same job serialise instead of losing an update), check who holds each attempt, insert the
events with `ON CONFLICT (event_id) DO NOTHING`, then fold only the events that were really new
(a replayed or duplicated event changes nothing) and write every changed or new job row in one
statement. A job is named by (tenant, job_id); events of nodes that predate the tenant field get
theirs first (control/db/blanktenant.py). Node events are kept as they came; node state is the
node tracker's (control/nodes.py).
Before any of it, a job event from a node that does not hold its attempt (control/db/holders.py)
is taken out of the batch and kept in `rejected_events` instead: it changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeGuard

import asyncpg
import msgspec

from control.db import holders, queries, runtimes
from control.db.blanktenant import fill_tenants
from control.db.holders import Rejection
from control.db.incoming import BadMessage as BadMessage
from control.db.incoming import Incoming as Incoming
from control.fold import FOLD_COLUMNS, JobRow, at, fold_job, row_values
from schemas.events import Accepted, Event, JobEvent, is_job_event, kind_of
from schemas.jobs import JobSpec

#: A job event's row in `job_events`, in the order of INSERT_EVENTS' arrays.
EVENT_COLUMNS = (
    "event_id", "tenant", "job_id", "kind", "node_id", "attempt", "ts", "body", "stream_seq",
)  # fmt: skip

#: One statement for the whole batch; ordered so that concurrent batches lock keys in one order.
INSERT_EVENTS = """
INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, attempt, ts, body, stream_seq)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
                     $7::timestamptz[], $8::jsonb[], $9::bigint[])
ORDER BY 1
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

#: The batch's job rows that exist, locked in key order, as the fold reads them.
LOCK_JOBS = f"""
SELECT {", ".join("NULL::text AS result" if c == "result" else c for c in FOLD_COLUMNS)},
       spec IS NULL AS no_spec
FROM jobs
WHERE (tenant, job_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY tenant, job_id FOR UPDATE
"""

#: Postgres types of the folded columns (`result`, like `spec`, travels as JSON text).
_TYPES = {
    "job_id": "text", "submitted_at": "timestamptz", "tenant": "text", "pool": "text",
    "priority": "text", "operation": "text", "state": "text", "state_rank": "smallint",
    "state_ts": "timestamptz", "state_event_id": "text", "node_id": "text", "attempts": "int",
    "stream_seq": "bigint", "queued_at": "timestamptz", "started_at": "timestamptz",
    "finished_at": "timestamptz", "percent": "float8", "fps": "float8", "speed": "float8",
    "progress_attempt": "int", "progress_at": "timestamptz", "last_error": "text",
    "stderr_tail": "text", "error_at": "timestamptz", "resubmitted_at": "timestamptz",
    "result": "text",
}  # fmt: skip
assert tuple(_TYPES) == FOLD_COLUMNS
_row_type = ", ".join(f"{c} {t}" for c, t in _TYPES.items())
_columns = ", ".join(FOLD_COLUMNS)
_set = [c for c in FOLD_COLUMNS if c not in ("tenant", "job_id", "result")]

#: Every job row the batch changed, in one statement, the rows as one JSON array (cheaper to
#: send than a typed array per column): rows new to Postgres are inserted (those a concurrent
#: batch inserted first come back, to be folded into what it wrote), rows locked by LOCK_JOBS
#: are updated. `result` and `spec` are only ever filled, never cleared.
WRITE_JOBS = f"""
WITH s AS (
    SELECT * FROM json_to_recordset($1::json)
        AS s(is_new boolean, spec jsonb, deadline timestamptz, {_row_type})
), inserted AS (
    INSERT INTO jobs ({_columns}, spec, deadline)
    SELECT {", ".join("result::jsonb" if c == "result" else c for c in FOLD_COLUMNS)}, spec,
           deadline
    FROM s WHERE is_new ORDER BY tenant, job_id
    ON CONFLICT (tenant, job_id) DO NOTHING
    RETURNING tenant, job_id
), updated AS (
    UPDATE jobs AS j SET
        ({", ".join(_set)}) = ({", ".join("s." + c for c in _set)}),
        result = COALESCE(s.result::jsonb, j.result),
        spec = COALESCE(j.spec, s.spec),
        deadline = COALESCE(j.deadline, s.deadline),
        updated_at = now()
    FROM s WHERE NOT s.is_new AND j.tenant = s.tenant AND j.job_id = s.job_id
)
SELECT tenant, job_id FROM inserted
"""

INSERT_BAD_EVENT = """
INSERT INTO bad_events (stream_seq, subject, error, payload) VALUES ($1, $2, $3, $4)
ON CONFLICT (stream_seq) DO NOTHING
"""

#: (tenant, job_id)
JobKey = tuple[str, str]


@dataclass(slots=True)
class StoreResult:
    inserted: int = 0
    duplicates: int = 0
    jobs_changed: int = 0
    #: Events refused (their node does not hold the attempt) and recorded for the first time.
    rejected: list[Rejection] = field(default_factory=list)
    #: The job events stored for the first time by this batch (a replay or duplicate is not).
    fresh: list[Incoming] = field(default_factory=list)


@dataclass(slots=True)
class _Locked:
    row: JobRow
    no_spec: bool


def _is_job(ev: Event) -> TypeGuard[JobEvent]:
    return is_job_event(ev)


def event_row(item: Incoming) -> tuple[object, ...]:
    """An event as its `job_events` row (EVENT_COLUMNS)."""
    ev = item.event
    tenant, job_id, attempt = (ev.tenant, ev.job_id, ev.attempt) if _is_job(ev) else (None, None, 0)
    return (ev.event_id, tenant, job_id, kind_of(ev), ev.node_id, attempt, at(ev.ts), item.body,
            item.stream_seq)  # fmt: skip


async def store_batch(
    conn: asyncpg.Connection, items: Sequence[Incoming], bad: Sequence[BadMessage] = ()
) -> StoreResult:
    """Insert `items` idempotently and fold the new ones; the caller owns the transaction."""
    result = StoreResult()
    first: dict[str, Incoming] = {}
    for item in items:  # a duplicate in the batch counts as its first copy in the stream
        first.setdefault(item.event.event_id, item)
    unique = await fill_tenants(conn, list(first.values()))
    keys = sorted({(e.tenant, e.job_id) for i in unique if _is_job(e := i.event)})
    locked = await lock_jobs(conn, keys)
    resubmitted = {k: r.row.resubmitted_at for k, r in locked.items() if r.row.resubmitted_at}
    refused = await holders.check(conn, unique, resubmitted)
    if refused:
        result.rejected = await holders.record(conn, refused)
        out = {r.event.event_id for r in refused}
        unique = [i for i in unique if i.event.event_id not in out]
    if unique:
        columns = list(zip(*(event_row(i) for i in unique), strict=True))
        new_ids = {r["event_id"] for r in await conn.fetch(INSERT_EVENTS, *columns)}
        fresh = [i for i in unique if i.event.event_id in new_ids]
        result.fresh = [i for i in fresh if _is_job(i.event)]
        result.inserted = len(fresh)
        result.duplicates = len(items) - len(fresh) - len(refused)
        job_events = [i.event for i in result.fresh if _is_job(i.event)]
        result.jobs_changed = await fold_jobs(conn, job_events, locked)
    if bad:
        await conn.executemany(
            INSERT_BAD_EVENT,
            [(b.stream_seq, b.subject, b.error.replace("\x00", ""), b.payload) for b in bad],
        )
    return result


async def lock_jobs(conn: asyncpg.Connection, keys: Sequence[JobKey]) -> dict[JobKey, _Locked]:
    """The job rows of `keys` that exist, locked until the commit."""
    if not keys:
        return {}
    records = await conn.fetch(LOCK_JOBS, [k[0] for k in keys], [k[1] for k in keys])
    out = {}
    for r in records:
        row = JobRow(*tuple(r)[: len(FOLD_COLUMNS)])
        out[row.tenant, row.job_id] = _Locked(row, r["no_spec"])
    return out


async def fold_jobs(
    conn: asyncpg.Connection, events: Sequence[JobEvent], locked: dict[JobKey, _Locked]
) -> int:
    """Fold new job events into their rows (`locked`: the rows that existed, locked); returns
    how many rows changed or were created."""
    if not events:
        return 0
    by_job: dict[JobKey, list[JobEvent]] = defaultdict(list)
    for ev in events:
        by_job[ev.tenant, ev.job_id].append(ev)
    specs = _specs(events)
    writes: list[tuple[bool, JobRow]] = []
    #: The state each row had before this fold, to learn from the jobs it completes.
    before: dict[JobKey, str] = {}
    for key, evs in by_job.items():
        held = locked.get(key)
        before[key] = "submitted" if held is None else held.row.state
        if held is None:  # first seen here: the row starts at the batch's first event
            row = JobRow(job_id=key[1], tenant=key[0], submitted_at=at(min(e.ts for e in evs)))
            fold_job(row, evs)
            writes.append((True, row))
        elif fold_job(held.row, evs) or (held.no_spec and key in specs):
            writes.append((False, held.row))
    late = await _write_jobs(conn, writes, specs)
    changed, done = len(writes), [r for _, r in writes if (r.tenant, r.job_id) not in late]
    if late:  # inserted meanwhile by a concurrent batch (now committed): fold into its row
        again = await lock_jobs(conn, sorted(late))
        rewrites = []
        for key in late:
            held = again[key]
            before[key] = held.row.state
            if fold_job(held.row, by_job[key]) or (held.no_spec and key in specs):
                rewrites.append((False, held.row))
        await _write_jobs(conn, rewrites, specs)
        changed = len(writes) - len(late) + len(rewrites)
        done += [r for _, r in rewrites]
    # A job counts once, when its row becomes completed: a replayed or second `completed`
    # finds the row completed already.
    await runtimes.learn_from(
        conn, [r for r in done if r.state == "completed" and before[r.tenant, r.job_id] != r.state]
    )
    return changed


async def _write_jobs(
    conn: asyncpg.Connection, writes: Sequence[tuple[bool, JobRow]], specs: dict[JobKey, str]
) -> set[JobKey]:
    """Write the rows; returns the keys meant to be inserted that already existed."""
    if not writes:
        return set()
    rows = []
    for new, row in writes:
        spec = specs.get((row.tenant, row.job_id))
        fields = dict(zip(FOLD_COLUMNS, row_values(row), strict=True))
        due = None if spec is None else as_utc(_DUE.decode(spec).deadline)
        rows.append({"is_new": new, "spec": None if spec is None else msgspec.Raw(spec.encode()),
                     "deadline": due, **fields})  # fmt: skip
    inserted = await conn.fetch(WRITE_JOBS, msgspec.json.encode(rows).decode())
    meant = {(r.tenant, r.job_id) for new, r in writes if new}
    return meant - {(r["tenant"], r["job_id"]) for r in inserted}


class _Due(msgspec.Struct):
    """The one field of a spec the jobs row keeps in a column of its own."""

    deadline: datetime | None = None


_DUE = msgspec.json.Decoder(_Due)


def _specs(events: Sequence[JobEvent]) -> dict[JobKey, str]:
    """The specs `accepted` events carry, as JSON, for the jobs they name (the first one stored
    is kept, as on submit)."""
    return {
        (e.tenant, e.job_id): msgspec.json.encode(e.spec).decode()
        for e in events
        if isinstance(e, Accepted)
        and e.spec is not None
        and (e.spec.tenant, e.spec.job_id) == (e.tenant, e.job_id)
    }


async def record_submission(
    conn: asyncpg.Connection,
    spec: JobSpec,
    *,
    submitted_at: datetime,
    stream_seq: int | None = None,
    queued_at: datetime | None = None,
    estimated_run_s: float | None = None,
) -> None:
    """Record a job as submitted with its spec (the API on submit, or a dead letter read from
    the jobs stream); a job already further along keeps its state. `estimated_run_s`: the run
    time admission estimated, which the deadline at-risk check reads."""
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
        as_utc(spec.deadline),
        estimated_run_s,
    )


def as_utc(when: datetime | None) -> datetime | None:
    """A wire time as stored: one without a UTC offset is taken as UTC."""
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)
