"""The periodic loop: refresh the snapshot, evaluate alert rules, update the metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from control.alerts.rules import AlertEngine, Snapshot
from control.db import is_transient
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
        # Only the leader evaluates, and only it exports the fleet-wide gauges.
        self.metrics.update(snap, self.engine.firing(), leading=self.engine.active)
        self.last = snap

    async def run(self, stop: asyncio.Event) -> None:
        failing = False
        while not stop.is_set():
            try:
                await self.tick()
                if failing:
                    log.info("snapshot/alert tick works again")
                failing = False
            except Exception as exc:  # one failed refresh must not end the loop
                if not is_transient(exc):
                    log.exception("snapshot/alert tick failed")
                elif not failing:  # an outage: one line when it starts, one when it ends
                    log.warning("snapshot/alert tick failed: %s; retrying every %gs", exc,
                                self.interval)  # fmt: skip
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
