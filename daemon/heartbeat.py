"""Advertise this node: its record in the nodes KV bucket, refreshed every heartbeat_interval.

The entry carries capabilities plus the latest heartbeat, so a node that stops beating expires
from the bucket after its TTL. A capabilities change is also an event, sent through the outbox.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import psutil
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from daemon.job.running import RunningJobs
from daemon.journal.reporter import Reporter, new_event_id
from daemon.pull.slots import Slots
from schemas.codec import encode
from schemas.events import CapabilitiesChanged
from schemas.nodes import GpuLoad, Heartbeat, NodeCapabilities, NodeRecord, NodeState
from schemas.subjects import Subjects
from schemas.windows import WindowInForce, WindowRule

log = logging.getLogger("flotilla.heartbeat")


#: The processing windows in force, "config" or "runtime", and each pool's open tiers.
WindowReport = tuple[list[WindowRule], str, dict[str, list[str]]]


@dataclass
class HeartbeatSources:
    slots: Slots
    running: RunningJobs
    state: Callable[[], NodeState]
    outbox_depth: Callable[[], int]
    gpu_loads: Callable[[], Awaitable[list[GpuLoad]]]
    withdrawn: Callable[[], list[str]]
    work_dir: str
    #: The disk guard's verdict: under the watermark, so not pulling.
    disk_low: Callable[[], bool]
    windows: Callable[[], WindowReport] = lambda: ([], "config", {})


def build_heartbeat(
    node_id: str, src: HeartbeatSources, gpus: list[GpuLoad], interval: float = 0.0
) -> Heartbeat:
    """Blocking (psutil): call through asyncio.to_thread."""
    try:
        disk_free = psutil.disk_usage(src.work_dir).free
    except OSError:
        disk_free = 0
    rules, source, open_tiers = src.windows()
    return Heartbeat(
        node_id=node_id,
        ts=time.time(),
        state=src.state(),
        load1=os.getloadavg()[0],
        cpu_percent=min(100.0, psutil.cpu_percent(interval=None)),
        memory_percent=psutil.virtual_memory().percent,
        disk_free_bytes=disk_free,
        disk_low=src.disk_low(),
        slots={p: src.slots.capacity(p) for p in src.slots.pools},
        free_slots=src.slots.free_all(),
        running_jobs=src.running.ids(),
        running_tenants=src.running.tenants(),  # same order: (tenant, job_id) names a job
        gpus=gpus,
        withdrawn_encoders=src.withdrawn(),
        outbox_depth=src.outbox_depth(),
        windows=[WindowInForce(**msgspec.structs.asdict(r)) for r in rules],
        windows_source=source,
        open_tiers=open_tiers,
        interval_s=interval,
    )


class Advertiser:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        reporter: Reporter,
        caps: NodeCapabilities,
        sources: HeartbeatSources,
        interval: float,
    ) -> None:
        self.js, self.subjects, self.reporter = js, subjects, reporter
        self.caps, self.sources, self.interval = caps, sources, interval
        self._kv: KeyValue | None = None
        self._announced = False
        self.last: Heartbeat | None = None

    async def set_capabilities(self, caps: NodeCapabilities) -> None:
        if caps != self.caps:
            self.caps, self._announced = caps, False
        await self.beat()

    async def beat(self) -> None:
        node_id = self.caps.node_id
        if not self._announced:
            # Through the outbox: the event survives an outage like every other.
            event = CapabilitiesChanged(
                event_id=new_event_id(), node_id=node_id, ts=time.time(), capabilities=self.caps
            )
            await self.reporter.record(None, None, event)
            self._announced = True
        gpus = await self.sources.gpu_loads()
        hb = await asyncio.to_thread(build_heartbeat, node_id, self.sources, gpus, self.interval)
        self.last = hb
        if self._kv is None:
            self._kv = await self.js.key_value(self.subjects.nodes_bucket)
        await self._kv.put(node_id, encode(NodeRecord(capabilities=self.caps, heartbeat=hb)))

    async def run(self) -> None:
        """Beats after the first one, which `start` awaits so the node is visible once READY.
        A failure other than the broker's or the OS's is a bug, for the supervisor."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.beat()
            except (NatsError, OSError) as exc:  # NATS down: the next beat tries again
                log.warning("heartbeat failed: %s", exc)
                self._kv = None

    async def remove(self) -> None:
        """On a clean exit: a last record whose heartbeat says `offline` (so the fleet can tell
        a stop from a crash), then delete the entry so the fleet sees the node gone at once."""
        try:
            kv = self._kv or await self.js.key_value(self.subjects.nodes_bucket)
            if self.last is not None:
                hb = msgspec.structs.replace(
                    self.last, ts=time.time(), state="offline",
                    running_jobs=self.sources.running.ids(),
                    running_tenants=self.sources.running.tenants(),
                )  # fmt: skip
                record = NodeRecord(capabilities=self.caps, heartbeat=hb)
                await kv.put(self.caps.node_id, encode(record))
            await kv.delete(self.caps.node_id)
        except Exception as exc:
            log.debug("kv delete: %s", exc)
