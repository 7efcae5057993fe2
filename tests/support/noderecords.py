"""Real node records for tests: the JSON a daemon puts in the nodes bucket, built from schemas,
and a node tracker running for a test."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from nats.js import JetStreamContext

from control.nodes import NodeTracker
from schemas.codec import encode
from schemas.common import PROTOCOL
from schemas.nodes import (
    CpuInfo,
    FfmpegInfo,
    GpuLoad,
    Heartbeat,
    NodeCapabilities,
    NodeRecord,
    NodeState,
)
from schemas.subjects import Subjects


def node_record(
    node_id: str,
    *,
    pools: list[str] | None = None,
    encoders: list[str] | None = None,
    labels: dict[str, str] | None = None,
    ts: float | None = None,
    state: NodeState = "online",
    running: list[str] | None = None,
    gpu_temp: float | None = None,
) -> NodeRecord:
    caps = NodeCapabilities(
        node_id=node_id,
        hostname=node_id,
        daemon_version="0.1.0",
        protocol=PROTOCOL,  # as a node of this release says
        cpu=CpuInfo(model="test", physical_cores=4, logical_cores=8),
        memory_total_bytes=8 << 30,
        disk_total_bytes=100 << 30,
        disk_free_bytes=50 << 30,
        ffmpeg=FfmpegInfo(path="/usr/bin/ffmpeg", version="6.1"),
        verified_encoders=["libx264"] if encoders is None else encoders,
        pools=["cpu"] if pools is None else pools,
        labels=labels or {},
    )
    gpus = [] if gpu_temp is None else [GpuLoad(index=0, temperature_c=gpu_temp)]
    hb = Heartbeat(
        node_id=node_id,
        ts=time.time() if ts is None else ts,
        state=state,
        running_jobs=running or [],
        gpus=gpus,
    )
    return NodeRecord(capabilities=caps, heartbeat=hb)


async def put_node(
    js: JetStreamContext, subjects: Subjects, rec: NodeRecord, seen_by: NodeTracker | None = None
) -> int:
    """Put the record as its daemon would; with `seen_by`, return once that tracker has it."""
    kv = await js.key_value(subjects.nodes_bucket)
    revision = await kv.put(rec.capabilities.node_id, encode(rec))
    if seen_by is not None:
        assert await seen_by.wait_revision(revision, 10.0), "the tracker never saw the put"
    return revision


@contextlib.asynccontextmanager
async def tracking(
    js: JetStreamContext, subjects: Subjects, **kw: Any
) -> AsyncIterator[NodeTracker]:
    """A node tracker running for the block, its first read of the bucket done."""
    tracker = NodeTracker(js, subjects, **kw)
    task = asyncio.create_task(tracker.run())
    try:
        assert await tracker.wait_synced(10.0), "the tracker never read the bucket"
        yield tracker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
