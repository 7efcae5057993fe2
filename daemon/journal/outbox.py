"""Drain the journal's outbox to JetStream in order, each event once (its id as Nats-Msg-Id).

A row is marked sent only after its PubAck, so a crash or an outage re-sends it and the events
stream's duplicate window drops the copy. Whoever waits for a row (an ack waits for its terminal
event) is released at the PubAck itself: the mark is bookkeeping that only spares a re-send, so it
commits in the background, riding along with the journal's next commit (or alone after a fifth
of a second: daemon.journal.commit.DEFER_S), while the next window is read, from past the rows
in hand, and published; marks go to the journal in order, and several may wait at once.
Publishes go out in windows (several in flight on one connection, which keeps their order); only
the contiguous acked prefix of a window is marked, so the next try resumes at the first row
that failed. After a failure the window shrinks to one row and grows again (doubling) as
publishes succeed, so a long outage buffers single retries, not whole windows. A window that
fails partway can store the rows after the failure before the failed row's retry: the stream's
order is then off by that window, nothing is lost, and consumers order a job's events by attempt
and timestamp, not by stream sequence alone.

Every commit that adds rows hands them to the loop (the journal's outbox listener, in seq order)
and wakes it. While the loop is in step with the journal (its last read found every unsent row,
everything since has come through that hand-over and gone out), it publishes the rows handed over
without reading them back: a read is a trip to the journal's thread, three per job before. A
failed publish, a journal error, a commit that dropped rows for the outbox's bound or a hand-over
over its own bound puts the loop out of step, and it reads the journal again until a read finds
it drained. It reads after `poll_interval` only while rows are unsent (a publish that failed, a
mark in flight); with none (the journal's count), an idle node's outbox waits for a wake-up,
reading anyway after `idle_poll_interval`, a safety net.

The loop handles what it expects (a failed publish, a journal error) by backing off; anything
else is a bug, which its supervisor (common.supervise) logs and restarts it after: a restart
loses nothing, since unmarked rows are sent again and deduplicated by their event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections import deque

from nats.js import JetStreamContext
from nats.js.api import PubAck

from common.supervise import RESTART, Policy, Supervisor
from daemon.journal.rows import OutboxRow
from daemon.journal.store import Journal

log = logging.getLogger("flotilla.outbox")
NAME = "outbox-publisher"
#: Bound on rows handed over and not yet taken (their count and payload bytes): beyond it they
#: are let go and read back from the journal, so an outage cannot grow the hand-over.
FEED_MAX_ROWS = 1000
FEED_MAX_BYTES = 16 * 1024 * 1024


class OutboxPublisher:
    def __init__(
        self,
        journal: Journal,
        js: JetStreamContext,
        *,
        window: int = 64,
        publish_timeout: float = 2.0,
        poll_interval: float = 1.0,
        idle_poll_interval: float = 30.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 5.0,
    ) -> None:
        self.journal = journal
        self.js = js
        self.window = window
        self.publish_timeout = publish_timeout
        self.poll_interval = poll_interval
        self.idle_poll_interval = max(poll_interval, idle_poll_interval)
        #: Reads of the journal for rows to send, and windows taken from the hand-over instead.
        self.reads = 0
        self.handed = 0
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # Plain counters for metrics (the daemon exports them).
        self.published = 0  # rows PubAck'd, duplicates included
        self.duplicates = 0  # PubAcks the server flagged as duplicate (a re-send)
        self.failures = 0  # publishes that raised or timed out
        self.backoffs = 0
        self.last_error: str | None = None
        self._wake = asyncio.Event()
        self._marked = asyncio.Event()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        #: Event ids PubAck'd whose rows are not marked sent yet (their mark is in flight).
        self._unmarked: set[str] = set()
        #: Marks of PubAck'd rows, committing while the next windows go out.
        self._marks: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        #: Rows committed and handed over, not yet taken (seq order), their ids and bytes.
        self._feed: deque[OutboxRow] = deque()
        self._fed_ids: set[str] = set()
        self._feed_bytes = 0
        #: Bumped whenever handed-over rows were let go: a read begun before it cannot bring
        #: the loop back in step.
        self._lost = 0

    @property
    def depth(self) -> int:
        """Unsent rows in the outbox."""
        return self.journal.depth

    @property
    def healthy(self) -> bool:
        return self.last_error is None

    def notify(self) -> None:
        """New rows were committed: publish now instead of at the next poll."""
        self._wake.set()

    def start(self, supervisor: Supervisor | None = None, policy: Policy = RESTART) -> None:
        """Publish until `stop`, under `supervisor` (by default one that restarts it for ever)."""
        self.journal.add_outbox_listener(self._committed)
        self._stopping = asyncio.Event()
        run = (supervisor or Supervisor()).supervise(NAME, self._run, self._stopping, policy)
        self._task = asyncio.create_task(run, name=NAME)

    async def stop(self) -> None:
        """Stop at once; rows in flight and not yet marked are simply sent again next time."""
        self.journal.remove_outbox_listener(self._committed)
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._settle_marking()

    async def wait_sent(self, event_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """True once this event is PubAck'd (now or earlier), False after `timeout` seconds.

        Raises LookupError for an event that was never recorded in the journal."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Register before looking, so a PubAck landing in between still resolves the future.
        self._waiters.setdefault(event_id, []).append(future)
        try:
            if event_id in self._unmarked:  # PubAck'd, its mark still committing
                return True
            async with asyncio.timeout(timeout):
                # Handed over and not PubAck'd yet: unsent, no need to ask the journal.
                sent = False if event_id in self._fed_ids else await self.journal.is_sent(event_id)
                if sent is None:
                    raise LookupError(f"event {event_id} is not in the outbox")
                if not sent:
                    self.notify()
                    await future
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._waiters.get(event_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiters.pop(event_id, None)

    async def flush(self, timeout: float) -> bool:  # noqa: ASYNC109
        """True once the outbox is empty, False after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self.journal.depth > 0:
                    marked = self._marked
                    self.notify()
                    await marked.wait()
            return True
        except TimeoutError:
            return False

    async def _run(self) -> None:
        await self._settle_marking()  # a restart: the crashed run's last mark, if any
        window, delay = 1, self.backoff_initial
        after = 0  # rows up to this seq are PubAck'd (their marks done or in flight)
        drained = False  # the last window took every row there was
        # While `in_step` is the current `_lost`, the hand-over holds every unsent row past
        # `after`: no read is needed. Rows let go since (a bump of `_lost`) end it.
        in_step = -1
        while True:
            woken = True
            if drained and not self._wake.is_set():  # and nothing was committed since: no read
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_wait()):
                        await self._wake.wait()
                woken = self._wake.is_set()
            drained = False
            self._wake.clear()  # cleared before taking: a commit after it wakes us
            handed = in_step == self._lost and woken  # a wait that ran out reads: safety net
            lost = self._lost
            rows: list[OutboxRow] = []
            try:
                self._check_marks()  # what a mark raised is handled here, in the loop
                if handed:
                    self.handed += 1
                    rows = self._take(window, after)
                else:
                    self.reads += 1
                    rows = await self.journal.pending_outbox(window, after=after)
                if not rows:
                    if not handed and lost == self._lost:
                        in_step = self._drop_taken(after, lost)
                    drained = True
                    continue
                sent = await self._publish(rows)
                if sent:
                    acked = rows[:sent]
                    self._resolve(acked)
                    mark = asyncio.create_task(self._mark(acked), name="outbox-mark")
                    self._marks.add(mark)
                    mark.add_done_callback(self._mark_ended)
                    after = acked[-1].seq
            except (sqlite3.Error, OSError) as exc:  # the journal: back off, as for NATS
                log.exception("outbox publisher: journal error")
                self.last_error, sent = str(exc), -1
                after = 0  # a mark may be lost: read every unmarked row again (deduplicated)
            if sent == len(rows):
                if handed:
                    drained = not self._feed
                else:
                    drained = len(rows) < window
                    if drained and lost == self._lost:
                        in_step = self._drop_taken(after, lost)
                window, delay = min(window * 2, self.window), self.backoff_initial
                continue
            in_step = -1  # what was handed over past the failure is read back
            self.backoffs += 1
            window = 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    def _committed(self, rows: list[OutboxRow], complete: bool) -> None:
        """The journal's listener: a commit added these rows (seq order)."""
        size = sum(len(row.payload) for row in rows)
        if (not complete or len(self._feed) + len(rows) > FEED_MAX_ROWS
                or self._feed_bytes + size > FEED_MAX_BYTES):  # fmt: skip
            self._feed.clear()
            self._fed_ids.clear()
            self._feed_bytes = 0
            self._lost += 1
        else:
            self._feed.extend(rows)
            self._fed_ids.update(row.event_id for row in rows)
            self._feed_bytes += size
        self._wake.set()

    def _take(self, limit: int, after: int) -> list[OutboxRow]:
        """Up to `limit` handed-over rows past `after` (those up to it went out from a read)."""
        rows: list[OutboxRow] = []
        while self._feed and len(rows) < limit:
            row = self._feed.popleft()
            self._feed_bytes -= len(row.payload)
            if row.seq > after:
                rows.append(row)
        return rows

    def _drop_taken(self, after: int, lost: int) -> int:
        """A read found the journal drained up to `after`: the handed-over rows up to it went
        out from that read, and the rest are all there is. Returns `lost`: in step under it."""
        while self._feed and self._feed[0].seq <= after:
            row = self._feed.popleft()
            self._feed_bytes -= len(row.payload)
            self._fed_ids.discard(row.event_id)
        return lost

    def _poll_wait(self) -> float:
        """How long to wait for a commit's wake-up before reading the journal anyway."""
        return self.poll_interval if self.journal.depth else self.idle_poll_interval

    async def _mark(self, rows: list[OutboxRow]) -> None:
        try:
            await self.journal.mark_sent(row.seq for row in rows)
        finally:
            self._unmarked.difference_update(row.event_id for row in rows)
            self._marked.set()
            self._marked = asyncio.Event()

    def _mark_ended(self, mark: asyncio.Task[None]) -> None:
        """A failed mark wakes the loop, which raises it (`_check_marks`) and reads again."""
        if not mark.cancelled() and mark.exception() is not None:
            self._wake.set()

    def _check_marks(self) -> None:
        """Raise what a finished mark raised; forget the finished ones."""
        for mark in [m for m in self._marks if m.done()]:
            self._marks.discard(mark)
            error = None if mark.cancelled() else mark.exception()
            if error is not None:
                raise error

    async def _settle_marking(self) -> None:
        """Let the marks left in flight (stop, crash) end; their outcome no longer matters."""
        marks, self._marks = self._marks, set()
        if marks:
            await asyncio.wait(marks)
            for mark in marks:
                if not mark.cancelled():
                    mark.exception()  # retrieved: a failed mark only means a re-send

    async def _publish(self, rows: list[OutboxRow]) -> int:
        """Publish a window; return how many rows from its start were PubAck'd."""
        results = await asyncio.gather(
            *(self._publish_one(r) for r in rows), return_exceptions=True
        )
        sent = 0
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, BaseException):
                self._failed(row, result)
                break
            sent += 1
        self.failures += sum(isinstance(r, BaseException) for r in results)
        if sent == len(rows) and self.last_error is not None:
            log.info("outbox publishing again (%d rows waiting)", self.journal.depth)
            self.last_error = None
        return sent

    async def _publish_one(self, row: OutboxRow) -> PubAck:
        ack = await self.js.publish(
            row.subject,
            row.payload,
            timeout=self.publish_timeout,
            headers={"Nats-Msg-Id": row.event_id},
        )
        self.published += 1
        if ack.duplicate:
            self.duplicates += 1
        return ack

    def _failed(self, row: OutboxRow, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}"
        if self.last_error is None:  # log the change of state, not every retry
            log.warning(
                "outbox publish of %s failed (%s); retrying with back-off, %d rows waiting",
                row.event_id,
                reason,
                self.journal.depth,
            )
        self.last_error = reason

    def _resolve(self, rows: list[OutboxRow]) -> None:
        """PubAck'd: whoever waits for these rows may go on (an ack may now be sent)."""
        for row in rows:
            self._unmarked.add(row.event_id)
            self._fed_ids.discard(row.event_id)
            for future in self._waiters.pop(row.event_id, []):
                if not future.done():
                    future.set_result(None)
