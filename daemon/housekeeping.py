"""The daemon's periodic chores: metric gauges from live state, and journal pruning."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from daemon.metrics import Metrics
from daemon.pull.slots import Slots
from daemon.wiring import Backend
from schemas.results import JobResult

log = logging.getLogger("flotilla.daemon")


def count_job(m: Metrics, outcome: str, pool: str, wall: float, res: JobResult | None) -> None:
    m.jobs_total.labels(outcome=outcome, pool=pool).inc()
    if res is not None:
        m.job_duration.observe(wall)
        if res.realtime_factor is not None:
            m.realtime_factor.set(res.realtime_factor)


async def gauges(metrics: Metrics, slots: Slots, b: Backend, interval: float = 5.0) -> None:
    """Gauges that read live state are set on an interval, not at scrape time."""
    while True:
        for pool, free in slots.free_all().items():
            metrics.slots_free.labels(pool=pool).set(free)
        metrics.outbox_depth.set(b.outbox_depth())
        metrics.nats_connected.set(1 if b.nc.is_connected else 0)
        for load in await b.gpu_loads():
            gpu = str(load.index)
            if load.utilization_percent is not None:
                metrics.gpu_util.labels(gpu=gpu).set(load.utilization_percent / 100)
            if load.encoder_utilization_percent is not None:
                metrics.gpu_enc_util.labels(gpu=gpu).set(load.encoder_utilization_percent / 100)
        await asyncio.sleep(interval)


async def prune(b: Backend, retention_days: float, interval: float = 3600.0) -> None:
    """Old journal rows go on a schedule so the database stays bounded."""
    while True:
        await asyncio.sleep(interval)
        try:
            await b.raw_journal.prune(retention_days * 86400)
        except (sqlite3.Error, OSError) as exc:  # a busy or full disk: next time
            log.warning("journal prune failed: %s", exc)
