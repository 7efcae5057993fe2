"""The node's local journal: job attempts, their states and the event outbox in one SQLite file.

Every state change is written together with the events it produces, in one transaction, before
the daemon acts on it; the outbox publisher (daemon/journal/outbox.py) then drains the events to
JetStream in order. All writes go through one connection and a group committer
(daemon/journal/commit.py, which also documents the FULL/NORMAL durability choice).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from daemon.config import DaemonConfig
from daemon.journal import deliveries as dl
from daemon.journal.commit import DEFER_S, GroupCommitter, OutboxListener, WriteOp, Writer
from daemon.journal.dbfile import open_connection
from daemon.journal.migrations import migrate
from daemon.journal.prune import PruneResult, checkpoint, prune
from daemon.journal.rows import (
    DURABLE_STATES,
    FINISHED_STATES,
    JobRow,
    JobState,
    JobUpdate,
    OutboxRow,
    derived_event_id,
)
from schemas.codec import encode
from schemas.events import TERMINAL_KINDS, Event, Interrupted, kind_of
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.journal")

_JOB_COLUMNS = (
    "tenant, job_id, attempt, state, stream_seq, subject, pool, priority, spec, error, "
    "scratch_dir, received_at, started_at, finished_at, updated_at, temp_paths"
)
# Spelled exactly as in the partial index jobs_active, so SQLite uses it.
_ACTIVE = "'received', 'running', 'paused'"
SELECT_JOB = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE tenant = ? AND job_id = ? AND attempt = ?"
SELECT_ACTIVE = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE state IN ({_ACTIVE}) ORDER BY received_at"
SELECT_PENDING = (
    "SELECT seq, event_id, subject, payload, kind, terminal, created_at, sent_at "
    "FROM outbox WHERE sent_at IS NULL AND seq > ? ORDER BY seq LIMIT ?"
)
COUNT_PENDING = "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL"
SELECT_SENT = "SELECT sent_at FROM outbox WHERE event_id = ?"


def _log_failed_mark(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.warning("journal: a settled mark did not commit (%s); a restart settles again", error)


class Journal:
    """Open with `await Journal.open(path)`; close with `await journal.close()`."""

    def __init__(
        self, writer: Writer, committer: GroupCommitter, path: Path, subjects: Subjects
    ) -> None:
        self._writer = writer
        self._committer = committer
        self.path = path
        self.subjects = subjects
        #: Where a corrupt journal was moved at open; None when the file was sound.
        self.quarantined: Path | None = None
        self._listeners: list[OutboxListener] = []
        self._closed = False
        committer.on_events = self._notify

    @classmethod
    async def open(
        cls,
        path: Path | str,
        *,
        subjects: Subjects | None = None,
        outbox_max_rows: int = 100_000,
        commit_delay: float = 0.0,
        defer_s: float = DEFER_S,
    ) -> Journal:
        path = Path(path)
        conn, quarantined = await open_connection(path)
        try:
            await migrate(conn)
            depth = int((await _one(conn, COUNT_PENDING, ()))[0])
        except BaseException:
            await conn.close()
            raise
        writer = Writer(conn)
        committer = GroupCommitter(
            writer, depth=depth, max_outbox_rows=outbox_max_rows, delay=commit_delay,
            defer_s=defer_s,
        )  # fmt: skip
        journal = cls(writer, committer, path, subjects or Subjects())
        journal.quarantined = quarantined
        committer.start()
        return journal

    @classmethod
    async def for_config(cls, config: DaemonConfig) -> Journal:
        subjects = Subjects(config.nats.prefix, config.nats.partitions)
        return await cls.open(
            config.journal_path, subjects=subjects, outbox_max_rows=config.outbox_max_rows
        )

    async def close(self) -> None:
        """Commit what is queued, then close. Idempotent. An unclosed journal keeps the
        process alive at exit (aiosqlite's worker thread is not a daemon thread)."""
        if self._closed:
            return
        self._closed = True
        await self._committer.stop()
        await self._writer.conn.close()

    @property
    def commit_task(self) -> asyncio.Task[None] | None:
        """The group committer's task: if it died, nothing would be recorded again."""
        return self._committer.task

    # -- counters for metrics and tests ----------------------------------------------------
    @property
    def depth(self) -> int:
        """Unsent outbox rows (kept in memory, in step with every commit)."""
        return self._committer.depth

    @property
    def transactions(self) -> int:
        return self._writer.transactions

    @property
    def synchronous(self) -> str:
        """Durability of the latest commit: "FULL" when it gated an ack, else "NORMAL"."""
        return self._writer.synchronous

    @property
    def ops_committed(self) -> int:
        return self._committer.ops_committed

    @property
    def dropped_progress(self) -> int:
        return self._committer.dropped_progress

    def add_outbox_listener(self, listener: OutboxListener) -> None:
        """`listener(rows, complete)` runs after each commit that added outbox rows, with those
        rows in seq order (the publisher takes them from there instead of reading them back);
        `complete` is False when the commit dropped unsent rows to keep the outbox's bound."""
        self._listeners.append(listener)

    def remove_outbox_listener(self, listener: OutboxListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self, rows: list[OutboxRow], complete: bool) -> None:
        for listener in self._listeners:
            listener(rows, complete)

    # -- writes ----------------------------------------------------------------------------
    async def record(
        self,
        updates: Sequence[JobUpdate] = (),
        events: Sequence[Event] = (),
        *,
        delivery: dl.Delivery | None = None,
        settles: bool = True,
    ) -> None:
        """Job rows and their events in one transaction; returns once committed (with FULL
        sync when it holds a finished state or terminal event). Raises what SQLite raised if
        the commit failed. A cancelled caller does not withdraw its write: it still commits.

        `delivery` (at accept) is the JetStream delivery behind the attempt; a terminal event
        is noted on its attempt's delivery, so a redelivery finds it (`ended`). A finished
        state means the caller settles the message next (ack, nak, term): its delivery is
        marked settled, so a restart never naks it (`settles=False`: recovery's own marks)."""
        if not updates and not events and delivery is None:
            return
        now = time.time()
        durable = any(u.state in DURABLE_STATES for u in updates) or any(
            kind_of(e) in TERMINAL_KINDS for e in events
        )
        # The job's end, not an attempt's: a failure that will be retried ends nothing.
        terminal = [e for e in events if kind_of(e) in TERMINAL_KINDS
                    and getattr(e, "final", True)]  # fmt: skip
        extra: list[tuple[str, tuple[Any, ...]]] = []
        if delivery is not None:
            d = delivery
            extra.append((dl.INSERT, (d.tenant, d.job_id, d.attempt, d.stream_seq, d.reply,
                                      d.alive_at)))  # fmt: skip
        # An attempt that ends the job is settled only once its ack or term is confirmed
        # (`settled`): a crash in between leaves it for the restart to settle.
        ending = {(getattr(e, "tenant", ""), getattr(e, "job_id", None),
                   getattr(e, "attempt", None)) for e in terminal}  # fmt: skip
        if settles:
            extra += [(dl.SETTLED, (now, u.tenant, u.job_id, u.attempt)) for u in updates
                      if u.state in FINISHED_STATES
                      and (u.tenant, u.job_id, u.attempt) not in ending]  # fmt: skip
        for e in terminal:
            job_id, attempt = getattr(e, "job_id", None), getattr(e, "attempt", None)
            if job_id is not None and attempt is not None:
                tenant = getattr(e, "tenant", "")
                extra.append((dl.TERMINAL, (e.event_id, tenant, job_id, attempt)))
        op = WriteOp(
            jobs=[u.params(now) for u in updates],
            events=[self._event_params(e, now) for e in events],
            sent=[],
            durable=durable,
            extra=extra,
        )
        await self._committer.submit(op)

    async def alive(self, job_id: str, attempt: int, at: float, *, tenant: str = "") -> None:
        """JetStream confirmed (at `at`) that it still holds the attempt's message for us."""
        params = (at, tenant, job_id, attempt)
        op = WriteOp([], [], [], durable=False, extra=[(dl.ALIVE, params)])
        await self._committer.submit(op)

    async def settled(
        self, job_id: str, attempt: int, *, tenant: str = "", durable: bool = True
    ) -> None:
        """The attempt's message is dealt with: its ack or term confirmed, or, at a restart, a
        nak sent or the message left to JetStream. A mark a crash loses (durable=False) only
        makes the restart settle the message once more, so it is not waited for: it rides along
        with the next commit, or commits alone soon after (daemon.journal.commit.DEFER_S)."""
        params = (time.time(), tenant, job_id, attempt)
        op = WriteOp([], [], [], durable=durable, extra=[(dl.SETTLED, params)])
        if durable:
            await self._committer.submit(op)
        else:
            self._committer.defer(op).add_done_callback(_log_failed_mark)

    async def job_received(
        self,
        job_id: str,
        attempt: int,
        *,
        stream_seq: int,
        subject: str,
        pool: str,
        priority: str,
        spec: bytes | str,
        events: Sequence[Event] = (),
        scratch_dir: str | None = None,
        tenant: str = "",
    ) -> None:
        text = spec.decode() if isinstance(spec, bytes) else spec
        update = JobUpdate(
            job_id, attempt, "received", stream_seq, subject, pool, priority, text,
            scratch_dir=scratch_dir, tenant=tenant,
        )  # fmt: skip
        await self.record([update], events)

    async def job_transition(
        self,
        job_id: str,
        attempt: int,
        state: JobState,
        *,
        events: Sequence[Event] = (),
        error: str | None = None,
        scratch_dir: str | None = None,
        temp_paths: list[str] | None = None,
        tenant: str = "",
    ) -> None:
        update = JobUpdate(
            job_id, attempt, state, error=error, scratch_dir=scratch_dir, temp_paths=temp_paths,
            tenant=tenant,
        )  # fmt: skip
        await self.record([update], events)

    async def mark_sent(self, seqs: Iterable[int]) -> None:
        """Rows PubAck'd by JetStream. Not a durable commit: a lost mark only re-sends (deduped)."""
        sent = list(seqs)
        if sent:  # it rides along with the next commit: no transaction of its own while busy
            await self._committer.defer(WriteOp(jobs=[], events=[], sent=sent, durable=False))

    async def recover(self, node_id: str) -> list[JobRow]:
        """After a crash: attempts in hand become `interrupted` (with an event); returns them."""
        rows = await self.running_jobs()
        if not rows:
            return []
        now = time.time()
        reason = "daemon restarted while the job ran"
        updates = [
            JobUpdate(r.job_id, r.attempt, "interrupted", error=reason, tenant=r.tenant)
            for r in rows
        ]
        events: list[Event] = [
            Interrupted(
                event_id=derived_event_id(r.tenant, r.job_id, r.attempt, "interrupted"),
                job_id=r.job_id,
                tenant=r.tenant,
                node_id=node_id,
                attempt=r.attempt,
                ts=now,
                reason=reason,
            )
            for r in rows
        ]
        await self.record(updates, events, settles=False)
        log.warning("journal recovery: %d job attempt(s) marked interrupted", len(rows))
        return rows

    def _event_params(self, event: Event, now: float) -> tuple[Any, ...]:
        kind = kind_of(event)
        subject = self.subjects.events(event.node_id, kind)
        return (event.event_id, subject, encode(event), kind, int(kind in TERMINAL_KINDS), now)

    # -- reads -----------------------------------------------------------------------------
    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        # Same connection as the writer: wait for the lock so no read sees a half-done batch.
        async with self._writer.lock:
            return list(await self._writer.conn.execute_fetchall(sql, params))

    async def pending_outbox(self, limit: int, *, after: int = 0) -> list[OutboxRow]:
        """The oldest unsent rows, from past seq `after` (rows in hand are skipped)."""
        rows = await self._rows(SELECT_PENDING, (after, limit))
        return [OutboxRow.from_row(r) for r in rows]

    async def outbox_depth(self) -> int:
        return int((await self._rows(COUNT_PENDING))[0][0])

    async def is_sent(self, event_id: str) -> bool | None:
        """True once PubAck'd, False while pending, None if no such row (never recorded)."""
        rows = await self._rows(SELECT_SENT, (event_id,))
        return None if not rows else rows[0][0] is not None

    async def job(self, job_id: str, attempt: int, *, tenant: str = "") -> JobRow | None:
        rows = await self._rows(SELECT_JOB, (tenant, job_id, attempt))
        return JobRow.from_row(rows[0]) if rows else None

    async def ended(self, job_id: str, stream_seq: int, *, tenant: str = "") -> dl.Ended | None:
        """The attempt of this stream message that already ended here, if any."""
        rows = await self._rows(dl.SELECT_ENDED, (tenant, job_id, stream_seq))
        if not rows:
            return None
        attempt, event_id, kind = rows[0]
        return dl.Ended(int(attempt), str(event_id), None if kind is None else str(kind))

    async def unsettled_ends(self) -> list[dl.Unsettled]:
        """Attempts that ended here whose ack or term was never confirmed."""
        out = []
        for r in await self._rows(dl.SELECT_ENDED_UNSETTLED):
            row = dict(r)
            event_id, kind = row.pop("terminal_event"), row.pop("kind")
            delivery = dl.Delivery(**row)
            out.append(dl.Unsettled(delivery, str(event_id), None if kind is None else str(kind)))
        return out

    async def interrupted_deliveries(self) -> list[dl.Delivery]:
        """Interrupted attempts (see `recover`) whose message was not handed back yet."""
        return [dl.Delivery.from_row(r) for r in await self._rows(dl.SELECT_INTERRUPTED)]

    async def running_jobs(self) -> list[JobRow]:
        """Attempts received, running or paused."""
        return [JobRow.from_row(r) for r in await self._rows(SELECT_ACTIVE)]

    # -- housekeeping ----------------------------------------------------------------------
    async def prune(
        self, retention_seconds: float, *, batch_size: int = 1000, max_batches: int = 100
    ) -> PruneResult:
        """Delete sent events and finished attempts older than retention, then checkpoint."""
        return await prune(self._writer, retention_seconds, batch_size, max_batches)

    async def checkpoint(self) -> None:
        await checkpoint(self._writer)


async def _one(conn: aiosqlite.Connection, sql: str, params: tuple[Any, ...]) -> Any:
    cursor = await conn.execute(sql, params)
    return await cursor.fetchone()
