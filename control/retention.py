"""Retention: delete old rows in bounded batches, on an interval.

Events, finished jobs (the canary's sooner), rejected events, ended webhook deliveries,
retried dead letters and ended workflows each have an age limit. Unfinished jobs and running
workflows are never deleted. Each batch is its own short transaction, so pruning never holds
locks for long nor competes with ingest for one huge delete; every delete walks an index on the
age it tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
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


Step = Callable[[datetime, int], Awaitable[int]]


async def _batches(step: Step, days: float, batch: int, *, max_batches: int = 100) -> int:
    """Run one pruning step (rows older than the cut-off, at most `batch`) until one falls
    short; returns the rows deleted."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    total = 0
    for _ in range(max_batches):
        deleted = await step(cutoff, batch)
        total += deleted
        if deleted < batch:
            break
    return total


def _delete(db: asyncpg.Pool, sql: str) -> Step:
    """A step that is one DELETE statement ($1 cut-off, $2 batch)."""

    async def step(cutoff: datetime, batch: int) -> int:
        return int((await db.execute(sql, cutoff, batch)).split()[-1])

    return step


def _jobs(db: asyncpg.Pool, tenant: str | None = None) -> Step:
    """A step that deletes finished jobs (of one tenant, or all) with their rows in other
    tables, in one transaction."""

    async def step(cutoff: datetime, batch: int) -> int:
        async with db.acquire() as conn, conn.transaction():
            if tenant is None:
                doomed = await conn.fetch(queries.DOOMED_JOBS, cutoff, batch)
            else:
                doomed = await conn.fetch(queries.DOOMED_TENANT_JOBS, cutoff, batch, tenant)
            if not doomed:
                return 0
            keys = [r["tenant"] for r in doomed], [r["job_id"] for r in doomed]
            for sql in queries.DELETE_JOB_ROWS:
                await conn.execute(sql, *keys)
            return len(doomed)

    return step


async def prune_events(
    db: asyncpg.Pool, retention_days: float, batch: int, *, max_batches: int = 100
) -> int:
    """Delete events older than the retention, `batch` rows per transaction; returns the count."""
    step = _delete(db, queries.PRUNE_EVENTS)
    return await _batches(step, retention_days, batch, max_batches=max_batches)


async def prune(db: asyncpg.Pool, p: Policy) -> dict[str, int]:
    """One retention run over every table; returns the rows deleted per kind."""
    b = p.batch
    return {
        "events": await prune_events(db, p.events, b),
        "canary jobs": await _batches(_jobs(db, CANARY_TENANT), p.canary_jobs, b),
        "jobs": await _batches(_jobs(db), p.jobs, b),
        "rejected events": await _batches(
            _delete(db, queries.PRUNE_REJECTED_EVENTS), p.rejected_events, b
        ),
        "webhook deliveries": await _batches(
            _delete(db, queries.PRUNE_WEBHOOK_DELIVERIES), p.webhook_deliveries, b
        ),
        "dead letters": await _batches(_delete(db, queries.PRUNE_DEAD_LETTERS), p.dead_letters, b),
        # Kept as long as finished jobs: a workflow's status names its step jobs.
        "workflows": await _batches(_delete(db, queries.PRUNE_WORKFLOWS), p.jobs, b),
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
