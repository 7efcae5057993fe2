"""Keep the journal small: delete old sent events and finished attempts, then shrink the WAL."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from daemon.journal.commit import Writer
from daemon.journal.deliveries import PRUNE as PRUNE_DELIVERIES

log = logging.getLogger("flotilla.journal")

# Unsent rows and attempts still in hand are never candidates, whatever their age.
PRUNE_OUTBOX = """DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox
    WHERE sent_at IS NOT NULL AND sent_at < ? LIMIT ?)"""
PRUNE_JOBS = """DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs
    WHERE finished_at IS NOT NULL AND finished_at < ? LIMIT ?)"""


@dataclass(frozen=True, slots=True)
class PruneResult:
    outbox_rows: int
    job_rows: int


async def prune(
    writer: Writer, retention_seconds: float, batch_size: int, max_batches: int
) -> PruneResult:
    """At most `max_batches` transactions of `batch_size` deletes per table, so commits queued
    meanwhile wait for one short batch, never for the whole clean-up."""
    cutoff = time.time() - retention_seconds
    outbox = await _delete(writer, PRUNE_OUTBOX, cutoff, batch_size, max_batches)
    jobs = await _delete(writer, PRUNE_JOBS, cutoff, batch_size, max_batches)
    await checkpoint(writer)
    if outbox or jobs:
        log.info("journal pruned %d sent events and %d finished attempts", outbox, jobs)
    return PruneResult(outbox, jobs)


async def _delete(writer: Writer, sql: str, cutoff: float, batch: int, max_batches: int) -> int:
    total = 0
    for _ in range(max_batches):
        async with writer.transaction(durable=False) as conn:
            deleted = int((await conn.execute(sql, (cutoff, batch))).rowcount)
            if sql is PRUNE_JOBS and deleted:  # their deliveries go with them
                await conn.execute(PRUNE_DELIVERIES, (deleted,))
        total += deleted
        if deleted < batch:
            break
    return total


async def checkpoint(writer: Writer) -> tuple[int, int, int]:
    """Fold the WAL into the database and truncate it (busy, wal frames, checkpointed frames).

    A WAL only shrinks at a checkpoint that finds no reader in the way; with one connection
    that always succeeds, and `journal_size_limit` caps what is left between checkpoints."""
    async with writer.lock:
        cursor = await writer.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        row = await cursor.fetchone()
    busy, frames, done = (int(v) for v in row) if row else (0, 0, 0)
    log.debug("journal checkpoint: busy=%s wal_frames=%s checkpointed=%s", busy, frames, done)
    return busy, frames, done
