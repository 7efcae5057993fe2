"""Learned run times in Postgres (`runtime_estimates`): written by the fold, read on submit.

The fold calls `learn_from` with the rows a batch turned completed, inside the batch's
transaction: each job is learned from once (the row was not completed before), so a replayed
event changes nothing. Rows are locked in key order, so concurrent batches wait for each other
rather than lose an update or deadlock. A submit reads one row by its primary key.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import asyncpg
import msgspec

from control.fold import JobRow
from control.runtimes import Learned, RuntimeKey, Sample, learn, runtime_key, sample_of
from schemas.jobs import JobSpec
from schemas.results import JobResult

log = logging.getLogger("flotilla.runtimes")

_KEYS = "unnest($1::text[], $2::text[], $3::int[], $4::text[])"

SPECS = """
SELECT tenant, job_id, spec::text AS spec FROM jobs
WHERE (tenant, job_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
"""

ENSURE = f"""
INSERT INTO runtime_estimates (operation, codec, height, pool)
SELECT * FROM {_KEYS} ORDER BY 1, 2, 3, 4
ON CONFLICT DO NOTHING
"""

LOCK = f"""
SELECT operation, codec, height, pool, runs, wall_s, rtf_runs, rtf FROM runtime_estimates
WHERE (operation, codec, height, pool) IN (SELECT * FROM {_KEYS})
ORDER BY 1, 2, 3, 4 FOR UPDATE
"""

UPDATE = """
UPDATE runtime_estimates AS r
SET runs = u.runs, wall_s = u.wall_s, rtf_runs = u.rtf_runs, rtf = u.rtf, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[], $6::float8[], $7::int[],
            $8::float8[]) AS u(operation, codec, height, pool, runs, wall_s, rtf_runs, rtf)
WHERE (r.operation, r.codec, r.height, r.pool) = (u.operation, u.codec, u.height, u.pool)
"""

GET = """
SELECT runs, wall_s, rtf_runs, rtf FROM runtime_estimates
WHERE operation = $1 AND codec = $2 AND height = $3 AND pool = $4
"""

_SPEC = msgspec.json.Decoder(JobSpec)
_RESULT = msgspec.json.Decoder(JobResult)


def _key_of(row: JobRow, spec: str | None) -> RuntimeKey:
    if spec is not None:
        try:
            return runtime_key(_SPEC.decode(spec))
        except (msgspec.DecodeError, ValueError):
            pass  # a spec of another release: the coarser key below
    return RuntimeKey(row.operation, "", 0, row.pool)


def _sample(row: JobRow) -> Sample | None:
    if row.result is None:
        return None
    try:
        result = _RESULT.decode(row.result)
    except (msgspec.DecodeError, ValueError):
        return None
    measured = None
    if row.started_at is not None and row.finished_at is not None:
        measured = (row.finished_at - row.started_at).total_seconds()
    return sample_of(result, measured)


def _columns(keys: Sequence[RuntimeKey]) -> list[list[object]]:
    return [[k.operation for k in keys], [k.codec for k in keys], [k.height for k in keys],
            [k.pool for k in keys]]  # fmt: skip


async def learn_from(conn: asyncpg.Connection, completed: Sequence[JobRow]) -> None:
    """Add the runs of rows that just became completed (the caller's transaction)."""
    if not completed:
        return
    specs = {
        (r["tenant"], r["job_id"]): r["spec"]
        for r in await conn.fetch(
            SPECS, [r.tenant for r in completed], [r.job_id for r in completed]
        )
    }
    by_key: dict[RuntimeKey, list[Sample]] = defaultdict(list)
    for row in completed:
        sample = _sample(row)
        if sample is not None:
            by_key[_key_of(row, specs.get((row.tenant, row.job_id)))].append(sample)
    if not by_key:
        return
    keys = sorted(by_key)
    await conn.execute(ENSURE, *_columns(keys))
    rows = await conn.fetch(LOCK, *_columns(keys))
    out: list[tuple[RuntimeKey, Learned]] = []
    for r in rows:
        key = RuntimeKey(r["operation"], r["codec"], r["height"], r["pool"])
        held = Learned(r["runs"], r["wall_s"], r["rtf_runs"], r["rtf"])
        out.append((key, learn(held, by_key[key])))
    await conn.execute(
        UPDATE, *_columns([k for k, _ in out]), [v.runs for _, v in out],
        [v.wall_s for _, v in out], [v.rtf_runs for _, v in out], [v.rtf for _, v in out],
    )  # fmt: skip


async def learned_for(db: asyncpg.Pool, key: RuntimeKey) -> Learned | None:
    row = await db.fetchrow(GET, key.operation, key.codec, key.height, key.pool)
    if row is None:
        return None
    return Learned(row["runs"], row["wall_s"], row["rtf_runs"], row["rtf"])
