"""Helpers for the ingest, fleet-state and dead-letter tests: events as a daemon sends them,
a migrated pool, a service run as a task, and bounded waiting."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Protocol

import asyncpg
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from control.db import create_pool
from control.db.migrate import migrate
from control.topology import TopologySettings, ensure_topology
from schemas.codec import encode
from schemas.events import (
    Accepted,
    Completed,
    Event,
    Failed,
    Progress,
    Started,
    kind_of,
)
from schemas.jobs import JobSpec
from schemas.nodes import CpuInfo, FfmpegInfo, Heartbeat, NodeCapabilities, NodeRecord
from schemas.operations import Probe
from schemas.results import JobResult
from schemas.subjects import Subjects

_ids = itertools.count()


class Runnable(Protocol):
    def stop(self) -> None: ...

    async def run(self) -> None: ...


@contextlib.asynccontextmanager
async def migrated_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(database_url)
    pool = await create_pool(database_url, max_size=4, attempts=3)
    try:
        yield pool
    finally:
        await pool.close()


#: One cpu pool: what the ingest and dead-letter tests need of the topology.
SETTINGS = TopologySettings(pools=["cpu"])


async def setup(nc: NATS, prefix: str) -> tuple[JetStreamContext, Subjects]:
    js, subjects = nc.jetstream(), Subjects(prefix)
    await ensure_topology(js, subjects, SETTINGS)
    return js, subjects


@contextlib.asynccontextmanager
async def running(service: Runnable) -> AsyncIterator[asyncio.Task[None]]:
    """Run `service.run()` as a task; stop it (and wait, bounded) on the way out."""
    task = asyncio.create_task(service.run())
    try:
        yield task
    finally:
        service.stop()
        try:
            await asyncio.wait_for(task, 10)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def wait_until(
    check: Callable[[], Awaitable[bool]], what: str, within: float = 120.0
) -> None:
    """Poll `check` until true; `within` only bounds a failure (a loaded machine is slow)."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def count(db: asyncpg.Pool, sql: str, *args: Any) -> int:
    return int(await db.fetchval(sql, *args))


def eid() -> str:
    return f"ev-{next(_ids)}-{time.monotonic_ns()}"


def _base(
    job_id: str, node: str, attempt: int, ts: float | None, tenant: str = "acme"
) -> dict[str, Any]:
    """As a current node sends it; tenant "" as a node older than the events' tenant field."""
    when = time.time() if ts is None else ts
    return {"event_id": eid(), "job_id": job_id, "tenant": tenant, "node_id": node,
            "attempt": attempt, "ts": when}  # fmt: skip


def accepted(
    job_id: str,
    node: str = "n1",
    attempt: int = 1,
    ts: float | None = None,
    seq: int = 0,
    spec: JobSpec | None = None,
    tenant: str = "acme",
) -> Accepted:
    """As a node reports it; without `spec`, as a node older than that field does."""
    return Accepted(
        **_base(job_id, node, attempt, ts, tenant), pool="cpu", priority="normal",
        operation="probe", stream_seq=seq, submitted_ts=None if ts is None else ts - 1, spec=spec,
    )  # fmt: skip


def started(
    job_id: str, node: str = "n1", attempt: int = 1, ts: float | None = None, tenant: str = "acme"
) -> Started:
    return Started(**_base(job_id, node, attempt, ts, tenant))


def progress(
    job_id: str,
    pct: float,
    node: str = "n1",
    attempt: int = 1,
    ts: float | None = None,
    tenant: str = "acme",
) -> Progress:
    return Progress(**_base(job_id, node, attempt, ts, tenant), percent=pct, fps=30.0, speed=2.0)


def completed(
    job_id: str,
    node: str = "n1",
    attempt: int = 1,
    ts: float | None = None,
    tenant: str = "acme",
) -> Completed:
    return Completed(**_base(job_id, node, attempt, ts, tenant), result=JobResult(wall_seconds=1.5))


def failed(
    job_id: str,
    reason: str,
    node: str = "n1",
    attempt: int = 1,
    ts: float | None = None,
    tenant: str = "acme",
) -> Failed:
    return Failed(
        **_base(job_id, node, attempt, ts, tenant), reason=reason, error_kind="permanent",
        final=True, stderr_tail="last lines",
    )  # fmt: skip


def lifecycle(job_id: str, t0: float, node: str = "n1", tenant: str = "acme") -> list[Event]:
    return [
        accepted(job_id, node, ts=t0, tenant=tenant),
        started(job_id, node, ts=t0 + 0.1, tenant=tenant),
        progress(job_id, 50.0, node, ts=t0 + 0.2, tenant=tenant),
        completed(job_id, node, ts=t0 + 0.3, tenant=tenant),
    ]


async def publish(js: JetStreamContext, subjects: Subjects, events: Sequence[Event]) -> None:
    """As the daemon's outbox does: subject by node and kind, event id as Nats-Msg-Id."""
    for chunk in range(0, len(events), 200):
        await asyncio.gather(
            *(
                js.publish(
                    subjects.events(e.node_id, kind_of(e)),
                    encode(e),
                    headers={"Nats-Msg-Id": e.event_id},
                )
                for e in events[chunk : chunk + 200]
            )
        )


def job_spec(job_id: str, tenant: str = "acme") -> JobSpec:
    return JobSpec(job_id=job_id, tenant=tenant, input="file:///media/in.mp4", operation=Probe())


def node_record(node_id: str, *, state: str = "online", ts: float | None = None) -> NodeRecord:
    caps = NodeCapabilities(
        node_id=node_id, hostname=node_id, daemon_version="0.1.0",
        cpu=CpuInfo(model="test", physical_cores=2, logical_cores=4),
        memory_total_bytes=1 << 30, disk_total_bytes=10 << 30, disk_free_bytes=5 << 30,
        ffmpeg=FfmpegInfo(path="/usr/bin/ffmpeg", version="7"), pools=["cpu"],
        slots={"cpu": 2},
    )  # fmt: skip
    hb = Heartbeat(node_id=node_id, ts=time.time() if ts is None else ts, state=state)  # type: ignore[arg-type]
    return NodeRecord(capabilities=caps, heartbeat=hb)
