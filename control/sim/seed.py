"""Pre-fill Postgres with finished jobs, so that API latencies are measured against a big table.

Rows are shaped like real ones: a completed job row (spec and result as JSON) and the events the
control plane would hold for it (accepted with the spec, started, completed with the result),
each body the event's own JSON as a node sends it. Tenant `seed`, ids `seed-0000001`…, spread
over the last 30 days. Written with COPY in batches, each one transaction with its events, in id
order: counting the rows there says where an interrupted run stopped, so seeding is idempotent
and resumes.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from schemas.events import Accepted, Completed, Started
from schemas.jobs import JobSpec
from schemas.registry import JOB_DECODER
from schemas.results import JobResult, OutputFile

TENANT = "seed"
BATCH = 20_000
SPAN_S = 30 * 86400.0
JOB_COLUMNS = [
    "job_id", "tenant", "pool", "priority", "operation", "state", "state_rank", "state_ts",
    "state_event_id", "node_id", "attempts", "submitted_at", "queued_at", "started_at",
    "finished_at", "percent", "progress_attempt", "result", "spec", "updated_at",
]  # fmt: skip
EVENT_COLUMNS = ["event_id", "tenant", "job_id", "kind", "node_id", "attempt", "ts", "body"]
RANK_TERMINAL = 4


def seed_id(i: int) -> str:
    return f"seed-{i:07d}"


def _rows(i: int, now: float, nodes: int) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
    job_id = seed_id(i)
    node = f"sim-{i % nodes + 1:05d}"
    submitted = now - SPAN_S + (SPAN_S * i / 1_000_000) % SPAN_S
    started, wall = submitted + 0.8, 5.0 + (i % 97)
    finished = started + wall
    spec: JobSpec = JOB_DECODER.decode(msgspec.json.encode({
        "v": 1, "job_id": job_id, "tenant": TENANT,
        "input": f"file:///srv/media/in/{job_id}.mp4", "output": f"file:///srv/media/out/{job_id}.mp4",
        "operation": {"op": "transcode", "codec": "h264", "preset": "veryfast", "height": 720},
    }))  # fmt: skip
    out = OutputFile(uri=spec.output or "", size_bytes=1_000_000 + i % 5_000_000,
                     sha256=hashlib.sha256(job_id.encode()).hexdigest())  # fmt: skip
    result = JobResult(
        wall_seconds=wall, media_seconds=wall * 2, realtime_factor=2.0, encoder="libx264",
        input_size_bytes=3 * out.size_bytes, outputs=[out],
    )  # fmt: skip
    base: dict[str, Any] = {"job_id": job_id, "tenant": TENANT, "node_id": node, "attempt": 1}
    events = [
        Accepted(event_id=uuid.uuid4().hex, ts=started - 0.1, pool="cpu", priority="normal",
                 operation="transcode", stream_seq=i, submitted_ts=submitted, spec=spec, **base),
        Started(event_id=uuid.uuid4().hex, ts=started, encoder="libx264",
                command=["ffmpeg", "-i", spec.input, "-c:v", "libx264", spec.output or ""], **base),
        Completed(event_id=uuid.uuid4().hex, ts=finished, result=result, **base),
    ]  # fmt: skip
    ev_rows: list[tuple[object, ...]] = [
        (e.event_id, TENANT, job_id, kind, node, 1, _dt(e.ts), msgspec.json.encode(e).decode())
        for e, kind in zip(events, ("accepted", "started", "completed"), strict=True)
    ]
    job = (
        job_id, TENANT, "cpu", "normal", "transcode", "completed", RANK_TERMINAL, _dt(finished),
        events[-1].event_id, node, 1, _dt(submitted), _dt(submitted), _dt(started),
        _dt(finished), 100.0, 1, msgspec.json.encode(result).decode(),
        msgspec.json.encode(spec).decode(), _dt(finished),
    )  # fmt: skip
    return job, ev_rows


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


async def seed(
    database_url: str, count: int, *, nodes: int = 1000, progress: Callable[[str], None] = print
) -> int:
    """Make `count` seed jobs exist; returns how many this call wrote."""
    conn = await asyncpg.connect(database_url, timeout=60)
    try:
        have = await conn.fetchval("SELECT count(*) FROM jobs WHERE tenant = $1", TENANT)
        if have >= count:
            return 0
        now, started, wrote = time.time(), time.monotonic(), 0
        for lo in range(have + 1, count + 1, BATCH):
            hi = min(count, lo + BATCH - 1)
            jobs, events = [], []
            for i in range(lo, hi + 1):
                job, evs = _rows(i, now, nodes)
                jobs.append(job)
                events += evs
            async with conn.transaction():
                await conn.copy_records_to_table("jobs", records=jobs, columns=JOB_COLUMNS)
                await conn.copy_records_to_table("job_events", records=events,
                                                 columns=EVENT_COLUMNS)  # fmt: skip
            wrote += len(jobs)
            rate = wrote / (time.monotonic() - started)
            progress(f"  seeded {hi:,}/{count:,} jobs ({rate:,.0f} jobs/s)")
        await conn.execute("ANALYZE jobs")
        await conn.execute("ANALYZE job_events")
        return wrote
    finally:
        await conn.close()


def seeded_sample(count: int, k: int = 2000) -> list[str]:
    """Ids of `k` seed jobs spread over the whole table (for the operator's gets)."""
    if count <= 0:
        return []
    step = max(1, count // k)
    return [seed_id(i) for i in range(1, count + 1, step)]
