"""Ingest throughput: events/s from the events stream into Postgres vs. a raw COPY of the same rows.

Both run in this process against the embedded nats-server and PostgreSQL (loopback, free ports):

- ingest: the control plane's real path (`Ingestor`: shared durable pull, decode, staging COPY,
  idempotent insert, fold into `jobs`, ack after commit), timed from start until every event
  is in Postgres;
- baseline: the same rows COPYed straight into `job_events` of a second database, in
  transactions of the same batch size (no NATS, no decode, no fold: the bulk-load ceiling);
- Postgres work alone: `store_batch` (the ingest's transaction: holder check, idempotent insert,
  fold into `jobs`) on the events already decoded, in transactions of the same size on one
  connection, like the baseline: no NATS, no decode, no ack. The ingest cannot outrun it by
  more than what its second batch in flight overlaps, so it bounds the ratio the stream can give.

Each round runs both on fresh databases, one after the other, and prints both rates and their
ratio; the summary is the median ratio (the machine may be busy with other work: a ratio taken
within one round is what compares). Usage: python -m bench.bench_ingest [jobs] [batch] [rounds]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import nats

from control.db import create_pool
from control.db.migrate import migrate
from control.db.store import EVENT_COLUMNS, Incoming, event_row, store_batch
from control.devstack.stack import EmbeddedStack
from control.ingest import Ingestor
from control.topology import TopologySettings, ensure_topology
from schemas.codec import encode
from schemas.events import Accepted, Completed, Event, Progress, Started, kind_of
from schemas.results import JobResult
from schemas.subjects import Subjects

_Part = TypeVar("_Part")

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


@dataclass
class Cpu:
    """CPU seconds of this process (decode, fold, the NATS and Postgres clients), of the
    Postgres backends serving the run, and of nats-server."""

    client: float = 0.0
    postgres: float = 0.0
    nats: float = 0.0

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.client - other.client, self.postgres - other.postgres,
                   self.nats - other.nats)  # fmt: skip

    @property
    def total(self) -> float:
        return self.client + self.postgres + self.nats


def _proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pid_of(marker: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    return int(entry.name)
    return None


async def cpu_now(backends: list[int], nats_pid: int | None) -> Cpu:
    """A snapshot (Linux /proc; zeros where it cannot be read)."""

    def read() -> Cpu:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        pg = sum(_proc_cpu(pid) for pid in backends)
        return Cpu(usage.ru_utime + usage.ru_stime, pg, _proc_cpu(nats_pid) if nats_pid else 0.0)

    return await asyncio.to_thread(read)


async def backends_of(db: asyncpg.Pool) -> list[int]:
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    return [r["pid"] for r in await db.fetch(sql)]


async def ingest_rate(
    url: str,
    dsn: str,
    evs: list[Event],
    batch: int = BATCH,
    prefix: str = "bench",
    nats_pid: int | None = None,
) -> tuple[float, Cpu]:
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
    before = await cpu_now(await backends_of(db), nats_pid)
    start = time.perf_counter()
    task = asyncio.create_task(ingest.run())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(done.wait(), MAX_SECONDS)
    elapsed = time.perf_counter() - start
    # Backends opened during the run count from zero (their start-up included, a few ms).
    after = await cpu_now(await backends_of(db), nats_pid)
    ingest.stop()
    await asyncio.wait_for(task, 10)
    stored = await db.fetchval("SELECT count(*) FROM job_events")
    await db.close()
    await nc.close()
    if stored != len(evs):
        raise SystemExit(f"ingest stored {stored} of {len(evs)} events in {MAX_SECONDS}s")
    return len(evs) / elapsed, after - before


async def batches_rate(
    dsn: str,
    evs: list[Event],
    parts: list[_Part],
    write: Callable[[asyncpg.Connection, _Part], Awaitable[object]],
) -> tuple[float, Cpu]:
    """`write` each part in a transaction of its own, on one connection of a freshly migrated
    database; checks that every event reached `job_events`."""
    conn = await asyncpg.connect(dsn)
    backend = [conn.get_server_pid()]
    before = await cpu_now(backend, None)
    start = time.perf_counter()
    for part in parts:
        async with conn.transaction():
            await write(conn, part)
    elapsed = time.perf_counter() - start
    after = await cpu_now(backend, None)
    stored = await conn.fetchval("SELECT count(*) FROM job_events")
    await conn.close()
    if stored != len(evs):
        raise SystemExit(f"stored {stored} of {len(evs)} events")
    return len(evs) / elapsed, after - before


def _items(evs: list[Event], batch: int) -> list[list[Incoming]]:
    items = [Incoming(e, encode(e).decode(), i + 1) for i, e in enumerate(evs)]
    return [items[i : i + batch] for i in range(0, len(items), batch)]


async def copy_rate(dsn: str, evs: list[Event], batch: int = BATCH) -> tuple[float, Cpu]:
    """The baseline: the rows COPYed straight into `job_events`."""
    await migrate(dsn)
    parts = [[event_row(i) for i in part] for part in _items(evs, batch)]

    async def copy(conn: asyncpg.Connection, rows: list[tuple[object, ...]]) -> None:
        await conn.copy_records_to_table("job_events", records=rows, columns=EVENT_COLUMNS)

    return await batches_rate(dsn, evs, parts, copy)


async def store_rate(dsn: str, evs: list[Event], batch: int = BATCH) -> tuple[float, Cpu]:
    """`store_batch` alone on decoded events, one transaction per batch on one connection."""
    await migrate(dsn)
    return await batches_rate(dsn, evs, _items(evs, batch), store_batch)


async def main(jobs: int, batch: int, rounds: int, data: Path) -> None:
    evs = events(jobs)
    ratios, cpu_ratios, store_ratios = [], [], []
    print(f"events: {len(evs)} ({jobs} jobs), batch {batch}, {rounds} rounds")
    async with EmbeddedStack(data) as stack:
        pg = stack.postgres
        nats_pid = await asyncio.to_thread(_pid_of, str(stack.nats.data_dir))
        for n in range(rounds):  # each round on fresh databases and a fresh stream
            await pg.create_database(f"ingest{n}")
            await pg.create_database(f"baseline{n}")
            await pg.create_database(f"store{n}")
            baseline, copy_cpu = await copy_rate(pg.dsn(f"baseline{n}"), evs, batch)
            alone, store_cpu = await store_rate(pg.dsn(f"store{n}"), evs, batch)
            rate, cpu = await ingest_rate(
                stack.nats.url, pg.dsn(f"ingest{n}"), evs, batch, f"b{n}", nats_pid
            )
            ratios.append(rate / baseline)
            cpu_ratios.append(copy_cpu.total / cpu.total)
            print(f"round {n + 1}: baseline COPY into job_events {baseline:,.0f} events/s, "
                  f"ingest (stream -> Postgres, folded) {rate:,.0f} events/s, "
                  f"ratio {rate / baseline:.3f}")  # fmt: skip
            per = 1000 / len(evs)
            print(f"  CPU ms per 1000 events: baseline client {copy_cpu.client * per * 1e3:.0f}"
                  f" + postgres {copy_cpu.postgres * per * 1e3:.0f};"
                  f" ingest client {cpu.client * per * 1e3:.0f}"
                  f" + postgres {cpu.postgres * per * 1e3:.0f}"
                  f" + nats-server {cpu.nats * per * 1e3:.0f};"
                  f" CPU ratio baseline/ingest {cpu_ratios[-1]:.3f}")  # fmt: skip
            store_ratios.append(alone / baseline)
            print(f"  Postgres work alone (store_batch on decoded events, one connection):"
                  f" {alone:,.0f} events/s, ratio {alone / baseline:.3f};"
                  f" CPU ms per 1000 events: client {store_cpu.client * per * 1e3:.0f}"
                  f" + postgres {store_cpu.postgres * per * 1e3:.0f}")  # fmt: skip
    print(f"ratio ingest/baseline: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f}")  # fmt: skip
    print(
        f"ratio Postgres work alone/baseline (what the stream cannot get past by more than the "
        f"overlap of its second batch): median {statistics.median(store_ratios):.3f}"
    )
    print(f"CPU ratio baseline/ingest (what the ratio tends to on a machine busy with other "
          f"work): median {statistics.median(cpu_ratios):.3f}")  # fmt: skip


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
