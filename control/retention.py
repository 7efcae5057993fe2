"""Retention: delete old rows in bounded batches, on an interval.

Events, finished jobs (the canary's sooner), rejected events, ended webhook deliveries and
retried dead letters each have an age limit. Unfinished jobs are never deleted. Each batch is its
own short transaction, so pruning never holds locks for long nor competes with ingest for one
huge delete; every delete walks an index on the age it tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from control.alerts.canary import CANARY_TENANT
from control.config import ControlConfig
from control.db import DATA_ERRORS, is_transient, queries

log = logging.getLogger("flotilla.retention")
#: Longest wait before a retention run that failed (Postgres away) is tried again.
RETRY_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Age limits in days, and rows per transaction."""

    events: float = 30.0
    jobs: float = 90.0
    canary_jobs: float = 1.0
    rejected_events: float = 30.0
    webhook_deliveries: float = 30.0
    dead_letters: float = 30.0
    batch: int = 5000

    @classmethod
    def of(cls, cfg: ControlConfig) -> Policy:
        return cls(
            events=cfg.event_retention_days, jobs=cfg.job_retention_days,
            canary_jobs=cfg.canary_retention_days,
            rejected_events=cfg.rejected_event_retention_days,
            webhook_deliveries=cfg.webhook_retention_days,
            dead_letters=cfg.dead_letter_retention_days, batch=cfg.prune_batch,
        )  # fmt: skip


async def _batches(
    db: asyncpg.Pool, sql: str, days: float, batch: int, *args: object, max_batches: int = 100
) -> int:
    """Run one pruning statement ($1 cut-off, $2 batch) until a batch falls short."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    total = 0
    for _ in range(max_batches):
        status = await db.execute(sql, cutoff, batch, *args)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            break
    return total


async def prune_events(
    db: asyncpg.Pool, retention_days: float, batch: int, *, max_batches: int = 100
) -> int:
    """Delete events older than the retention, `batch` rows per transaction; returns the count."""
    return await _batches(db, queries.PRUNE_EVENTS, retention_days, batch, max_batches=max_batches)


async def prune(db: asyncpg.Pool, p: Policy) -> dict[str, int]:
    """One retention run over every table; returns the rows deleted per kind."""
    b = p.batch
    return {
        "events": await prune_events(db, p.events, b),
        # The canary's first: with the default limits the general pass never meets its rows.
        "canary jobs": await _batches(
            db, queries.PRUNE_TENANT_JOBS, p.canary_jobs, b, CANARY_TENANT
        ),
        "jobs": await _batches(db, queries.PRUNE_JOBS, p.jobs, b),
        "rejected events": await _batches(db, queries.PRUNE_REJECTED_EVENTS, p.rejected_events, b),
        "webhook deliveries": await _batches(
            db, queries.PRUNE_WEBHOOK_DELIVERIES, p.webhook_deliveries, b
        ),
        "dead letters": await _batches(db, queries.PRUNE_DEAD_LETTERS, p.dead_letters, b),
    }


async def run_pruner(
    db: asyncpg.Pool, policy: Policy, interval: float, stop: asyncio.Event
) -> None:
    """Prune every `interval` seconds until `stop` is set; a run that fails on Postgres trouble
    is tried again after at most RETRY_AFTER seconds."""
    while not stop.is_set():
        wait = interval
        try:
            deleted = await prune(db, policy)
            done = ", ".join(f"{n} {what}" for what, n in deleted.items() if n)
            if done:
                log.info("pruned %s", done)
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, DATA_ERRORS)):
                raise
            log.warning("pruning failed: %s; retrying", exc)
            db.expire_connections()
            wait = min(interval, RETRY_AFTER)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), wait)
