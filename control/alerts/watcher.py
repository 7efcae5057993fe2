"""The periodic loop: refresh the snapshot, evaluate alert rules, update the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from control.alerts.rules import AlertEngine, Snapshot
from control.metrics import Metrics

log = logging.getLogger("flotilla.watch")
SnapshotSource = Callable[[], Awaitable[Snapshot]]


class Watcher:
    def __init__(
        self, source: SnapshotSource, engine: AlertEngine, metrics: Metrics, interval: float
    ) -> None:
        self.source, self.engine, self.metrics, self.interval = source, engine, metrics, interval
        self.last: Snapshot | None = None

    async def tick(self) -> None:
        snap = await self.source()
        await self.engine.evaluate(snap)
        self.metrics.update(snap, self.engine.firing())
        self.last = snap

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # one failed refresh must not end the loop
                log.exception("snapshot/alert tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
