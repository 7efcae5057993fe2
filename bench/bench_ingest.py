"""Ingest throughput: events/s from the events stream into Postgres vs. a raw COPY of the same rows.

Both run in this process against the embedded nats-server and PostgreSQL (loopback, free ports):

- ingest: the control plane's real path (`Ingestor`: shared durable pull, decode, staging COPY,
  idempotent insert, fold into `jobs`, ack after commit), timed from start until every event
  is in Postgres;
- baseline: the same rows COPYed straight into `job_events` of a second database, in
  transactions of the same batch size (no NATS, no decode, no fold: the bulk-load ceiling).

Each round runs both on fresh databases, one after the other, and prints both rates and their
ratio; the summary is the median ratio (the machine may be busy with other work: a ratio taken
within one round is what compares). Usage: python -m bench.bench_ingest [jobs] [batch] [rounds]
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import nats

from control.db import create_pool
from control.db.migrate import migrate
from control.db.store import EVENT_COLUMNS, Incoming, event_row
from control.devstack.stack import EmbeddedStack
from control.ingest import Ingestor
from control.topology import TopologySettings, ensure_topology
from schemas.codec import encode
from schemas.events import Accepted, Completed, Event, Progress, Started, kind_of
from schemas.results import JobResult
from schemas.subjects import Subjects

#: Events per ingest batch and per baseline transaction (the control plane's `ingest_batch`).
BATCH = 500
#: Bound on the ingest wait, so a stuck run ends instead of hanging.
MAX_SECONDS = 90.0


def events(jobs: int) -> list[Event]:
    """Four events per job (accepted, started, progress, completed) from 50 nodes, each naming
    its tenant as nodes do since jobs are keyed by (tenant, job_id)."""
    t0, out = time.time() - 60, list[Event]()
    for j in range(jobs):
        base: dict[str, Any] = {
            "job_id": f"job-{j}", "node_id": f"node-{j % 50}", "attempt": 1, "tenant": "acme",
        }  # fmt: skip
        out += [
            Accepted(**base, event_id=f"e{j}-a", ts=t0, pool="cpu", priority="normal",
                     operation="probe"),
            Started(**base, event_id=f"e{j}-s", ts=t0 + 1),
            Progress(**base, event_id=f"e{j}-p", ts=t0 + 2, percent=50.0, fps=30.0, speed=2.0),
            Completed(**base, event_id=f"e{j}-c", ts=t0 + 3, result=JobResult(wall_seconds=3)),
        ]  # fmt: skip
    return out


async def ingest_rate(
    url: str, dsn: str, evs: list[Event], batch: int = BATCH, prefix: str = "bench"
) -> float:
    subjects = Subjects(prefix)
    nc = await nats.connect(url)
    js = nc.jetstream(publish_async_max_pending=4000)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    for e in evs:  # untimed: the events are already in the stream when a real plane starts
        subject = subjects.events(e.node_id, kind_of(e))
        await js.publish_async(subject, encode(e), headers={"Nats-Msg-Id": e.event_id})
    await js.publish_async_completed()
    await migrate(dsn)
    db = await create_pool(dsn)
    done = asyncio.Event()

    def on_batch(size: int, lag: float) -> None:
        if ingest.stats.events_ingested >= len(evs):
            done.set()

    ingest = Ingestor(js, db, subjects, batch=batch, on_batch=on_batch)
    start = time.perf_counter()
    task = asyncio.create_task(ingest.run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), MAX_SECONDS)
    elapsed = time.perf_counter() - start
    ingest.stop()
    await asyncio.wait_for(task, 10)
    stored = await db.fetchval("SELECT count(*) FROM job_events")
    await db.close()
    await nc.close()
    if stored != len(evs):
        raise SystemExit(f"ingest stored {stored} of {len(evs)} events in {MAX_SECONDS}s")
    return len(evs) / elapsed


async def copy_rate(dsn: str, evs: list[Event], batch: int = BATCH) -> float:
    await migrate(dsn)
    rows = [event_row(Incoming(e, encode(e).decode(), i + 1)) for i, e in enumerate(evs)]
    conn = await asyncpg.connect(dsn)
    start = time.perf_counter()
    for i in range(0, len(rows), batch):
        async with conn.transaction():
            await conn.copy_records_to_table(
                "job_events", records=rows[i : i + batch], columns=EVENT_COLUMNS
            )
    elapsed = time.perf_counter() - start
    await conn.close()
    return len(rows) / elapsed


async def main(jobs: int, batch: int, rounds: int, data: Path) -> None:
    evs = events(jobs)
    ratios = []
    print(f"events: {len(evs)} ({jobs} jobs), batch {batch}, {rounds} rounds")
    async with EmbeddedStack(data) as stack:
        pg = stack.postgres
        for n in range(rounds):  # each round on fresh databases and a fresh stream
            await pg.create_database(f"ingest{n}")
            await pg.create_database(f"baseline{n}")
            baseline = await copy_rate(pg.dsn(f"baseline{n}"), evs, batch)
            rate = await ingest_rate(stack.nats.url, pg.dsn(f"ingest{n}"), evs, batch, f"b{n}")
            ratios.append(rate / baseline)
            print(f"round {n + 1}: baseline COPY into job_events {baseline:,.0f} events/s, "
                  f"ingest (stream -> Postgres, folded) {rate:,.0f} events/s, "
                  f"ratio {rate / baseline:.3f}")  # fmt: skip
    print(f"ratio ingest/baseline: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}")  # fmt: skip


if __name__ == "__main__":
    import uvloop

    data = Path(tempfile.mkdtemp(prefix="flotilla-bench-", dir="/tmp"))
    data.chmod(0o755)  # as root, PostgreSQL runs as its own user and must reach its data dir
    try:
        jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
        batch = int(sys.argv[2]) if len(sys.argv) > 2 else BATCH
        rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
        uvloop.run(main(jobs, batch, rounds, data))
    finally:
        shutil.rmtree(data, ignore_errors=True)
