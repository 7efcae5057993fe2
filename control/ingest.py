"""Ingest the events stream into Postgres: batches from the shared durable, acked after commit.

Every control-plane instance binds to the same durable consumer (`control-ingest`), so each
batch goes to one instance. A batch is decoded, written in one transaction (control/db/store.py)
and acked only after the commit. While Postgres is unreachable the same batch is retried with a
capped back-off (the messages are kept alive with in-progress acks), so nothing is lost and,
events being idempotent by id, nothing is counted twice. A message that cannot be decoded, or
that Postgres refuses, is recorded in `bad_events` and terminated: it never blocks the batch.
A job event from a node that does not hold the job's attempt (control/db/holders.py) is acked
but not folded: it is kept in `rejected_events`, counted, and logged on `flotilla.security`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from control.db import DATA_ERRORS, is_transient
from control.db.blanktenant import needs_tenant
from control.db.holders import Rejection
from control.db.store import BadMessage, Incoming, StoreResult, store_batch
from control.eventpull import EventPuller
from schemas.codec import DecodeError
from schemas.events import kind_of
from schemas.registry import EVENT_DECODER
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.ingest")
security = logging.getLogger("flotilla.security")

#: Batches in hand at once: the next one starts (on a second connection) while the current one
#: commits, and waits on its locks wherever the two meet instead of overtaking it.
PIPELINE = 2


@dataclass(slots=True)
class IngestStats:
    """Counters for the metrics exporter; read them, never write them."""

    events_ingested: int = 0  # new rows in job_events
    duplicates: int = 0  # events already stored (redelivery, replay, second instance)
    bad_events: int = 0
    #: Events refused because their node does not hold the attempt (each counted once).
    rejected: int = 0
    batches: int = 0
    last_batch_size: int = 0
    #: Wall time from the oldest event of the last batch to its commit.
    lag_seconds: float = 0.0
    db_retries: int = 0
    db_available: bool = True


def stream_seq(msg: Msg) -> int:
    """The message's events-stream sequence, read from its ack subject."""
    # `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.…` (9 tokens); the longer form with
    # a domain and account hash is left to nats-py, which builds a whole Metadata for it.
    tokens = msg.reply.split(".")
    if len(tokens) == 9 and tokens[0] == "$JS":
        return int(tokens[5])
    return msg.metadata.sequence.stream


def decode(msg: Msg) -> Incoming | BadMessage:
    """A message as an event, or as a bad message saying why (never raises)."""
    seq = stream_seq(msg)
    try:
        event = EVENT_DECODER.decode(msg.data)
        body = msg.data.decode()
    except (DecodeError, UnicodeDecodeError) as exc:
        return BadMessage(seq, msg.subject, str(exc), msg.data)
    # `<prefix>.events.<node>.<kind>`: a node may only speak for itself.
    if msg.subject.rsplit(".", 2)[-2:] != [event.node_id, kind_of(event)]:
        reason = f"subject {msg.subject} does not match node {event.node_id!r}, {kind_of(event)}"
        return BadMessage(seq, msg.subject, reason, msg.data)
    return Incoming(event, body, seq, msg.subject)


class Ingestor:
    def __init__(
        self,
        js: JetStreamContext,
        db: asyncpg.Pool,
        subjects: Subjects,
        *,
        batch: int = 500,
        fetch_timeout: float = 1.0,
        durable: str | None = None,
        max_wait: float = 0.05,
        max_backoff: float = 5.0,
        keepalive_interval: float = 15.0,
        on_batch: Callable[[int, float], None] | None = None,
        on_rejected: Callable[[Rejection], None] | None = None,
        on_fresh: Callable[[Sequence[Incoming]], Awaitable[None]] | None = None,
    ) -> None:
        self.js, self.db, self.subjects = js, db, subjects
        self.batch, self.fetch_timeout = batch, fetch_timeout
        #: How long the first message of a batch that is not full may wait for the rest.
        self.max_wait = max_wait
        self.durable = durable or subjects.ingest_consumer
        self.max_backoff, self.keepalive_interval = max_backoff, keepalive_interval
        #: Called after each commit with (batch size, lag seconds), e.g. to fill histograms.
        self.on_batch = on_batch
        #: Called once per newly rejected event, after its batch committed (e.g. a counter).
        self.on_rejected = on_rejected
        #: Awaited with the job events a batch stored for the first time, after the commit
        #: (the live per-job updates `flotilla watch` follows).
        self.on_fresh = on_fresh
        self.stats = IngestStats()
        self._stopping = asyncio.Event()
        self._puller: EventPuller | None = None
        #: Per batch in flight: set once it has written everything and is committing.
        self._written: dict[asyncio.Task[StoreResult], asyncio.Event] = {}

    def stop(self) -> None:
        """Finish the batches in hand, hand back what was fetched ahead, then return from `run`
        (within about two fetch timeouts: the open pull request is let run out first). A
        cancelled `run` hands back too, after the same wait."""
        self._stopping.set()

    async def run(self) -> None:
        self._stopping.clear()
        stream = self.subjects.events_stream
        puller = EventPuller(self.js, stream, self.durable, batch=self.batch,
                             expires=self.fetch_timeout, max_wait=self.max_wait)  # fmt: skip
        self._puller = puller
        await puller.start()
        in_flight: list[asyncio.Task[StoreResult]] = []
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await puller.take()
                except Exception as exc:  # the connection closing or reconnecting…
                    log.warning("ingest fetch failed: %s", exc)
                    await asyncio.sleep(min(self.max_backoff, 1.0))
                    continue
                if not msgs:
                    continue
                while len(in_flight) >= PIPELINE:
                    await in_flight.pop(0)
                in_flight.append(await self._start(msgs, in_flight[-1] if in_flight else None))
        except BaseException:
            for task in in_flight:
                task.cancel()
            raise
        finally:
            self._puller = None
            if in_flight:
                await asyncio.wait(in_flight)
            failures = [t.exception() for t in in_flight if not t.cancelled()]
            # Delivered but never taken: handed straight back for any instance to take.
            for msg in await puller.close():
                with contextlib.suppress(Exception):  # not handed back: redelivered after ack_wait
                    await msg.nak()
        for failure in failures:
            if failure is not None:
                raise failure

    async def ingest(self, msgs: Sequence[Msg]) -> StoreResult:
        """Store one fetched batch and ack it after the commit; retries while Postgres is away."""
        return await self._ingest(msgs, [decode(m) for m in msgs], None, asyncio.Event())

    async def _start(
        self, msgs: Sequence[Msg], previous: asyncio.Task[StoreResult] | None
    ) -> asyncio.Task[StoreResult]:
        """Start storing a batch once the previous one has written everything and is committing
        (so this one waits on its locks wherever the two meet, and never the other way round);
        returns the batch's task."""
        decoded = [decode(m) for m in msgs]  # while the previous batch waits on Postgres
        written_before = self._written.get(previous) if previous is not None else None
        if previous is not None and written_before is not None:
            waiter = asyncio.create_task(written_before.wait())
            await asyncio.wait([previous, waiter], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
        written = asyncio.Event()
        task = asyncio.create_task(self._ingest(msgs, decoded, previous, written))
        self._written[task] = written
        task.add_done_callback(self._written.pop)
        return task

    async def _ingest(
        self,
        msgs: Sequence[Msg],
        decoded: Sequence[Incoming | BadMessage],
        previous: asyncio.Task[StoreResult] | None,
        written: asyncio.Event,
    ) -> StoreResult:
        good = [d for d in decoded if isinstance(d, Incoming)]
        bad = [d for d in decoded if isinstance(d, BadMessage)]
        for b in bad:
            log.warning("bad event (seq %d on %s): %s", b.stream_seq, b.subject, b.error)
        if previous is not None and needs_tenant(good):
            await asyncio.wait([previous])  # blank tenants are looked up in committed rows
        try:
            result = await self._commit(msgs, good, bad, written)
        except DATA_ERRORS as exc:
            log.warning("batch refused by postgres (%s); storing its events one by one", exc)
            result = await self._isolate(msgs, good, bad)
        finally:
            written.set()
        if previous is not None:  # acks, counters and live updates go out in batch order
            await asyncio.wait([previous])
        self.stats.events_ingested += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.bad_events += len(bad)
        self._rejected(result.rejected)
        await _dispose(msgs, {b.stream_seq for b in bad})
        if self.on_fresh is not None and result.fresh:
            try:
                await self.on_fresh(result.fresh)
            except Exception as exc:  # live updates only: the events are stored either way
                log.debug("job updates not sent: %s", exc)
        self._account(good, len(msgs))
        return result

    async def _commit(
        self,
        msgs: Sequence[Msg],
        good: Sequence[Incoming],
        bad: Sequence[BadMessage],
        written: asyncio.Event | None = None,
    ) -> StoreResult:
        delay, kept_alive = 0.1, time.monotonic()
        while True:
            try:
                async with self.db.acquire() as conn, conn.transaction():
                    result = await store_batch(conn, good, bad)
                    if written is not None:
                        written.set()  # only the commit is left: the next batch may start
                self.stats.db_available = True
                return result
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.stats.db_retries += 1
                self.stats.db_available = False
                log.warning("postgres unavailable (%s); retrying batch in %.1fs", exc, delay)
            # Broken connections are dropped at once rather than found one acquire at a time.
            await self.db.expire_connections()
            if time.monotonic() - kept_alive >= self.keepalive_interval:
                kept_alive = time.monotonic()
                waiting = self._puller.buffered() if self._puller is not None else []
                await _keep_alive([*msgs, *waiting])
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    async def _isolate(
        self, msgs: Sequence[Msg], good: Sequence[Incoming], bad: list[BadMessage]
    ) -> StoreResult:
        total = StoreResult()
        subjects = {stream_seq(m): m.subject for m in msgs}
        for item in good:
            try:
                one = await self._commit(msgs, [item], [])
            except DATA_ERRORS as exc:
                seq = item.stream_seq or 0
                log.warning("event %s refused by postgres: %s", item.event.event_id, exc)
                bad.append(BadMessage(seq, subjects.get(seq, ""), str(exc), item.body.encode()))
                continue
            total.inserted += one.inserted
            total.duplicates += one.duplicates
            total.rejected += one.rejected
            total.fresh += one.fresh
        await self._commit(msgs, [], bad)
        return total

    def _rejected(self, rejected: Sequence[Rejection]) -> None:
        self.stats.rejected += len(rejected)
        for r in rejected:
            ev = r.event
            security.warning(
                "%s (stream seq %s, subject %s)", r.describe(), r.item.stream_seq, r.item.subject,
                extra={"job_id": ev.job_id, "node_id": ev.node_id, "attempt": ev.attempt},
            )  # fmt: skip
            if self.on_rejected is not None:
                self.on_rejected(r)

    def _account(self, good: Sequence[Incoming], size: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.last_batch_size = size
        if good:
            stats.lag_seconds = max(0.0, time.time() - min(i.event.ts for i in good))
        if self.on_batch is not None:
            self.on_batch(size, stats.lag_seconds)


async def _dispose(msgs: Sequence[Msg], bad_seqs: set[int]) -> None:
    """Ack what was stored, terminate what never will be; a lost ack means a harmless replay."""
    for msg in msgs:
        try:
            if bad_seqs and stream_seq(msg) in bad_seqs:
                await msg.term()
            else:
                await msg.ack()
        except Exception as exc:
            log.debug("ack failed (the event will be redelivered and skipped): %s", exc)


async def _keep_alive(msgs: Sequence[Msg]) -> None:
    for msg in msgs:
        try:
            await msg.in_progress()
        except Exception as exc:
            log.debug("in-progress ack failed: %s", exc)
