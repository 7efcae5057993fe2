"""API latency: job.get and job.list p50/p99 over NATS request/reply vs. the same SQL via asyncpg.

Against the embedded nats-server and PostgreSQL (loopback, free ports), in this process:
a `jobs` table of N jobs is filled through the real fold path (`store_batch`), the real
`ApiService` answers `<prefix>.api.job.get` / `job.list`, and a client requests one at a time.
The baseline runs the same query (control/api/jobquery.py's SQL) straight on an asyncpg pool, so
the difference is what the API adds: NATS round trip, decode, validation, encode.

Usage: python -m bench.bench_api [jobs]
"""

from __future__ import annotations

import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import nats

from control.api.jobquery import JOB_COLUMNS
from control.api.service import ApiService, ApiSettings
from control.db import create_pool
from control.db.migrate import migrate
from control.db.store import Incoming, store_batch
from control.devstack.stack import EmbeddedStack
from control.nodes import NodeTracker
from schemas.codec import encode
from schemas.events import Accepted, Completed, Event, Failed
from schemas.results import JobResult
from schemas.subjects import Subjects

GETS, LISTS, WARMUP = 2000, 500, 100
LIST_SQL = (
    f"SELECT {JOB_COLUMNS} FROM jobs WHERE state = $1"
    " ORDER BY submitted_at DESC, job_id DESC LIMIT $2"
)


def job_events(j: int, t0: float) -> list[Event]:
    base: dict[str, Any] = {"job_id": f"job-{j:06d}", "node_id": f"node-{j % 50}", "attempt": 1}
    ts = t0 + j * 0.01
    end: Event = (
        Failed(
            **base,
            event_id=f"e{j}-f",
            ts=ts + 2,
            reason="bad input",
            error_kind="permanent",
            final=True,
        )
        if j % 10 == 0
        else Completed(**base, event_id=f"e{j}-c", ts=ts + 2, result=JobResult(wall_seconds=2))
    )
    accepted = Accepted(**base, event_id=f"e{j}-a", ts=ts, pool="cpu", priority="normal",
                        tenant=f"t{j % 5}", operation="probe")  # fmt: skip
    return [accepted, end]


async def fill(db: asyncpg.Pool, jobs: int) -> None:
    t0 = time.time() - 86400
    for start in range(0, jobs, 1000):
        evs = [e for j in range(start, min(jobs, start + 1000)) for e in job_events(j, t0)]
        async with db.acquire() as conn, conn.transaction():
            await store_batch(conn, [Incoming(e, encode(e).decode()) for e in evs])
    await db.execute("ANALYZE jobs")


async def timed(n: int, call: Callable[[int], Awaitable[object]]) -> list[float]:
    for i in range(WARMUP):
        await call(i)
    out: list[float] = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def line(name: str, ms: list[float]) -> str:
    p50 = statistics.median(ms)
    p99 = statistics.quantiles(ms, n=100)[98]
    return f"{name:<24} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   (n={len(ms)})"


async def measure(url: str, dsn: str, jobs: int) -> list[str]:
    await migrate(dsn)
    db = await create_pool(dsn)
    await fill(db, jobs)
    nc = await nats.connect(url)
    subjects = Subjects("bench")
    # job.get and job.list never read the fleet: a tracker that is not running will do.
    fleet = NodeTracker(nc.jetstream(), subjects)
    api = ApiService(nc, subjects, ApiSettings(pools=["cpu"]), fleet, db)
    await api.start()
    rng = random.Random(7)
    ids = [f"job-{rng.randrange(jobs):06d}" for _ in range(GETS + WARMUP)]
    states = ["completed", "failed"]

    async def api_get(i: int) -> object:
        body = msgspec.json.encode({"v": 1, "job_id": ids[i]})
        reply = await nc.request("bench.api.job.get", body, timeout=5)
        if reply.headers and "Nats-Service-Error-Code" in reply.headers:
            raise SystemExit(f"job.get failed: {reply.data!r}")
        return reply

    async def api_list(i: int) -> object:
        body = msgspec.json.encode({"v": 1, "state": states[i % 2], "limit": 50})
        reply = await nc.request("bench.api.job.list", body, timeout=5)
        if len(msgspec.json.decode(reply.data)["jobs"]) != 50:
            raise SystemExit(f"job.list failed: {reply.data[:200]!r}")
        return reply

    async def sql_get(i: int) -> object:
        return await db.fetchrow(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1", ids[i])

    async def sql_list(i: int) -> object:
        return await db.fetch(LIST_SQL, states[i % 2], 51)

    try:
        return [
            line("job.get  (API)", await timed(GETS, api_get)),
            line("job.get  (asyncpg)", await timed(GETS, sql_get)),
            line("job.list (API)", await timed(LISTS, api_list)),
            line("job.list (asyncpg)", await timed(LISTS, sql_list)),
        ]
    finally:
        await api.stop()
        await nc.close()
        await db.close()


async def main(jobs: int, data: Path) -> None:
    async with EmbeddedStack(data) as stack:
        await stack.postgres.create_database("api")
        lines = await measure(stack.nats.url, stack.postgres.dsn("api"), jobs)
    print(f"jobs table: {jobs} rows; one request at a time")
    print("\n".join(lines))


if __name__ == "__main__":
    import uvloop

    data = Path(tempfile.mkdtemp(prefix="flotilla-bench-", dir="/tmp"))
    data.chmod(0o755)  # as root, PostgreSQL runs as its own user and must reach its data dir
    try:
        uvloop.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000, data))
    finally:
        shutil.rmtree(data, ignore_errors=True)
