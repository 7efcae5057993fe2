"""Group commit on the journal's one writer connection: concurrent callers share a transaction.

Durability is chosen per transaction. `synchronous` is a connection setting, so it is set before
each BEGIN: FULL when the batch holds a row that gates a JetStream ack/nak/term (a finished
state or a terminal event), so a power loss cannot roll back what the broker was told; NORMAL
otherwise (WAL stays consistent and a process crash loses nothing; only an OS crash or power
loss may lose the last NORMAL commits, and those are telemetry or states JetStream redelivers).
A FULL commit syncs the whole WAL, so it also makes every earlier NORMAL commit durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

import aiosqlite

from daemon.journal.rows import DROPPABLE_KINDS, OutboxRow

log = logging.getLogger("flotilla.journal")
T = TypeVar("T")
#: Told after a commit the rows it added to the outbox (seq order) and whether the outbox is
#: otherwise as before: False when the commit also dropped unsent rows to keep its bound.
OutboxListener = Callable[[list[OutboxRow], bool], None]
#: How long a deferred op (an outbox mark) waits for another commit to ride along with before
#: it commits alone. A crash loses at most this much of marks: those events are sent again
#: and the events stream's duplicate window (hours) drops the copies.
DEFER_S = 0.2

UPSERT_JOB = """
INSERT INTO jobs (tenant, job_id, attempt, state, stream_seq, subject, pool, priority, spec,
                  error, scratch_dir, temp_paths, received_at, started_at, finished_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, '[]'), ?, ?, ?, ?)
ON CONFLICT (tenant, job_id, attempt) DO UPDATE SET
    state       = excluded.state,
    stream_seq  = COALESCE(excluded.stream_seq, jobs.stream_seq),
    subject     = COALESCE(excluded.subject, jobs.subject),
    pool        = COALESCE(excluded.pool, jobs.pool),
    priority    = COALESCE(excluded.priority, jobs.priority),
    spec        = COALESCE(excluded.spec, jobs.spec),
    error       = COALESCE(excluded.error, jobs.error),
    scratch_dir = COALESCE(excluded.scratch_dir, jobs.scratch_dir),
    temp_paths  = COALESCE(?12, jobs.temp_paths), -- ?12 is the raw value: NULL keeps the list
    started_at  = COALESCE(jobs.started_at, excluded.started_at),
    finished_at = COALESCE(excluded.finished_at, jobs.finished_at),
    updated_at  = excluded.updated_at
"""
# A replayed event (same id) is already queued or sent: inserting it again would publish twice.
INSERT_EVENT = """
INSERT INTO outbox (event_id, subject, payload, kind, terminal, created_at)
VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING RETURNING seq
"""
MARK_SENT = "UPDATE outbox SET sent_at = ? WHERE seq = ? AND sent_at IS NULL"
_KINDS = ", ".join(f"'{k}'" for k in DROPPABLE_KINDS)
DROP_OLDEST = f"""
DELETE FROM outbox WHERE seq IN (
    SELECT seq FROM outbox WHERE sent_at IS NULL AND kind IN ({_KINDS}) ORDER BY seq LIMIT ?)
"""


@dataclass(slots=True)
class WriteOp:
    jobs: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    sent: list[int]
    durable: bool
    #: Further statements (sql, params) of the same transaction, run after the job rows.
    extra: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    future: asyncio.Future[None] | None = None


class Writer:
    """The one connection that writes: serialises transactions and sets their durability."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()
        self.transactions = 0
        #: `synchronous` level of the latest transaction: "FULL" or "NORMAL".
        self.synchronous = ""

    @asynccontextmanager
    async def transaction(self, *, durable: bool) -> AsyncIterator[aiosqlite.Connection]:
        async with self.lock:
            level = "FULL" if durable else "NORMAL"
            if level != self.synchronous:
                await self.conn.execute(f"PRAGMA synchronous = {level}")
                self.synchronous = level
            # IMMEDIATE takes the write lock up front: no SQLITE_BUSY halfway through.
            await self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                await self.conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    await self.conn.execute("ROLLBACK")
                raise
            self.transactions += 1

    async def run(self, body: Callable[[sqlite3.Connection], T], *, durable: bool) -> T:
        """`body` as one transaction, run whole on the connection's thread: one hop there and
        back instead of one per statement (the group committer's hot path)."""
        level = "FULL" if durable else "NORMAL"

        def transaction(conn: sqlite3.Connection) -> T:
            if level != self.synchronous:
                conn.execute(f"PRAGMA synchronous = {level}")
                self.synchronous = level
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
            return result

        async with self.lock:
            # aiosqlite's own queue to its thread, which owns the sqlite3 connection.
            on_thread = cast(Callable[..., Awaitable[T]], self.conn._execute)
            result = await on_thread(transaction, self.conn._conn)
            self.transactions += 1
            return result


class GroupCommitter:
    """Callers `submit` ops; one task commits whatever queued up meanwhile as one transaction."""

    def __init__(
        self,
        writer: Writer,
        *,
        depth: int,
        max_outbox_rows: int,
        delay: float = 0.0,
        on_events: OutboxListener | None = None,
        defer_s: float = DEFER_S,
    ) -> None:
        self.writer = writer
        self.depth = depth  # unsent outbox rows, kept in step with each commit
        self.max_outbox_rows = max_outbox_rows
        self.dropped_progress = 0
        self.ops_committed = 0
        self.on_events = on_events
        self._delay = delay
        self._queue: list[WriteOp] = []
        #: Ops that wait to ride along with the next commit (`submit_deferred`), oldest first.
        self._deferred: list[WriteOp] = []
        self._defer_s = defer_s
        self._deferred_due: asyncio.TimerHandle | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._last_warning = 0.0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="journal-commit")

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def stop(self) -> None:
        self._closing = True
        self._deferred_now()
        if self._task is not None:
            await self._task

    async def submit(self, op: WriteOp) -> None:
        if self._closing:
            raise RuntimeError("journal is closed")
        op.future = asyncio.get_running_loop().create_future()
        self._queue.append(op)
        self._wake.set()
        await op.future

    def defer(self, op: WriteOp) -> asyncio.Future[None]:
        """Commit `op` with the next transaction, or alone once `defer_s` has passed; the
        future resolves at that commit. For bookkeeping whose loss in a crash only repeats
        some work (an outbox mark, a settled mark): it costs no commit of its own while
        others are being made."""
        if self._closing:
            raise RuntimeError("journal is closed")
        loop = asyncio.get_running_loop()
        op.future = loop.create_future()
        self._deferred.append(op)
        if self._deferred_due is None:
            self._deferred_due = loop.call_later(self._defer_s, self._deferred_now)
        return op.future

    def _deferred_now(self) -> None:
        """The deferred ops go at the head of the queue (they were submitted first)."""
        if self._deferred_due is not None:
            self._deferred_due.cancel()
            self._deferred_due = None
        if self._deferred:
            self._queue[:0], self._deferred = self._deferred, []
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._delay and not self._closing:
                await asyncio.sleep(self._delay)  # let a few more callers join this commit
            if self._deferred:  # they ride along with this commit
                self._deferred_now()
            batch, self._queue = self._queue, []
            await self._commit(batch)

    async def _commit(self, batch: list[WriteOp]) -> None:
        try:
            inserted, dropped = await self._transaction(batch)
        except Exception as exc:
            if len(batch) > 1:
                for op in batch:  # one bad op must not fail its neighbours: retry each alone
                    await self._commit([op])
                return
            log.error("journal commit failed: %s", exc)
            _resolve(batch, exc)
            return
        _resolve(batch, None)
        if (inserted or dropped) and self.on_events is not None:
            try:
                self.on_events(inserted, not dropped)
            except Exception:  # a listener's bug must not look like a failed commit
                log.exception("journal outbox listener failed")

    async def _transaction(self, ops: list[WriteOp]) -> tuple[list[OutboxRow], int]:
        """Commit the ops as one transaction; returns the outbox rows it added and how many
        unsent ones it dropped."""
        durable = any(op.durable for op in ops)
        depth = self.depth

        def body(conn: sqlite3.Connection) -> tuple[list[OutboxRow], int, int]:
            return self._apply(conn, ops, depth)

        rows, marked, dropped = await self.writer.run(body, durable=durable)
        inserted = len(rows)
        excess = depth + inserted - marked - self.max_outbox_rows
        if excess > 0:
            self._warn_bound(excess, dropped)
        self.depth += inserted - marked - dropped
        self.dropped_progress += dropped
        self.ops_committed += len(ops)
        return rows, dropped

    @staticmethod
    def _apply_rows(conn: sqlite3.Connection, ops: list[WriteOp]) -> tuple[list[OutboxRow], int]:
        now = time.time()
        jobs = [params for op in ops for params in op.jobs]
        events = [params for op in ops for params in op.events]
        sent = [(now, seq) for op in ops for seq in op.sent]
        rows: list[OutboxRow] = []
        marked = 0
        if jobs:
            conn.executemany(UPSERT_JOB, jobs)
        for sql, params in (item for op in ops for item in op.extra):
            conn.execute(sql, params)
        # One by one for the seq each gets: the rows go to the outbox publisher as committed, so
        # it need not read them back. A replayed id inserts nothing and returns no seq.
        for params in events:
            added = conn.execute(INSERT_EVENT, params).fetchone()
            if added is not None:
                event_id, subject, payload, kind, terminal, created_at = params
                rows.append(OutboxRow(added[0], event_id, subject, payload, kind,
                                      bool(terminal), created_at, None))  # fmt: skip
        if sent:
            marked = conn.executemany(MARK_SENT, sent).rowcount
        return rows, marked

    def _apply(
        self, conn: sqlite3.Connection, ops: list[WriteOp], depth: int
    ) -> tuple[list[OutboxRow], int, int]:
        """On the connection's thread: the ops' statements, then the outbox bound."""
        rows, marked = self._apply_rows(conn, ops)
        dropped = 0
        excess = depth + len(rows) - marked - self.max_outbox_rows
        if excess > 0:
            dropped = conn.execute(DROP_OLDEST, (excess,)).rowcount
        return rows, marked, dropped

    def _warn_bound(self, excess: int, dropped: int) -> None:
        now = time.monotonic()
        if now - self._last_warning < 60.0:
            return
        self._last_warning = now
        log.warning(
            "journal outbox over its bound of %d rows: dropped %d oldest progress events%s",
            self.max_outbox_rows,
            dropped,
            "" if dropped >= excess else f"; {excess - dropped} non-droppable rows kept over it",
        )


def _resolve(ops: list[WriteOp], error: BaseException | None) -> None:
    for op in ops:
        if (
            op.future is None or op.future.done()
        ):  # the caller gave up (cancelled); the commit stands regardless
            continue
        if error is None:
            op.future.set_result(None)
        else:
            op.future.set_exception(error)
