"""Retention: delete events older than the configured age, in bounded batches, on an interval.

Job rows outlive their events (the API still answers for an old job); only `job_events` is
pruned. Each batch is its own short transaction, so pruning never holds locks for long nor
competes with ingest for one huge delete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

import asyncpg

from control.db import DATA_ERRORS, is_transient, queries

log = logging.getLogger("flotilla.retention")


async def prune_events(
    db: asyncpg.Pool, retention_days: float, batch: int, *, max_batches: int = 100
) -> int:
    """Delete events older than the retention, `batch` rows per transaction; returns the count."""
    cutoff = datetime.now(UTC) - timedelta(days=retention_days)
    total = 0
    for _ in range(max_batches):
        status = await db.execute(queries.PRUNE_EVENTS, cutoff, batch)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch:
            break
    return total


async def run_pruner(
    db: asyncpg.Pool, retention_days: float, batch: int, interval: float, stop: asyncio.Event
) -> None:
    """Prune every `interval` seconds until `stop` is set; Postgres trouble waits for the next."""
    while not stop.is_set():
        try:
            deleted = await prune_events(db, retention_days, batch)
            if deleted:
                log.info("pruned %d events older than %g days", deleted, retention_days)
        except Exception as exc:
            if not (is_transient(exc) or isinstance(exc, DATA_ERRORS)):
                raise
            log.warning("event pruning failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
