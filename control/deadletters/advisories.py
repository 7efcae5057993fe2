"""Dead letters: turn the jobs stream's advisories into failed jobs and dead-letter messages.

The advisories stream captures two advisories of the jobs stream (core NATS messages, lost if
nobody listens); the shared durable `control-advisories` hands each to one instance:

- MAX_DELIVERIES: the message exhausted the consumer's deliveries (a node crash loop) and,
  work-queue retention keeping such messages, is still in the stream. It is copied into
  `<prefix>.dlq.<tenant>.<job_id>` (original headers and payload), the job is failed in Postgres
  with "max deliveries exceeded" (a `failed` event of node `control`, folded like any other), and
  the message is deleted from the jobs stream.
- MSG_TERMINATED: a node terminated the message, which is gone. Nodes terminate after reporting
  the outcome, so the advisory is handled once ingest has folded that outcome (nak'd with a delay
  until then): a failed job becomes a dead letter, re-published from `jobs.spec`; a cancelled or
  completed one is no dead letter (an operator asked for the cancel).

Each step is idempotent (DLQ Msg-Id `dlq-<job_id>-<stream_seq>`, ON CONFLICT, a delete of a
missing message), so a crash between steps and the advisory's redelivery repeat nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg
import msgspec
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from control.db import is_transient, queries
from control.deadletters import store as dlq
from control.deadletters.retry import DeadLetterNotFound, retry_dead_letter
from control.deadletters.store import ADVISORY_DECODER, MAX_DELIVERIES_REASON, Advisory
from schemas.subjects import Subjects

__all__ = ["DeadLetterNotFound", "DeadLetters", "retry_dead_letter"]

log = logging.getLogger("flotilla.deadletter")

ADVISORIES_CONSUMER = "control-advisories"


@dataclass(slots=True)
class DeadLetterStats:
    dead_lettered: int = 0
    not_dead: int = 0  # terminated jobs that were cancelled or completed
    waits: int = 0  # terminated advisories put back until ingest caught up
    errors: int = 0


class DeadLetters:
    def __init__(
        self,
        js: JetStreamContext,
        db: asyncpg.Pool,
        subjects: Subjects,
        *,
        fetch_timeout: float = 1.0,
        patience: int = 15,
        wait_delay: float = 2.0,
        durable: str = ADVISORIES_CONSUMER,
    ) -> None:
        self.js, self.db, self.subjects = js, db, subjects
        self.fetch_timeout = fetch_timeout
        #: Deliveries of a terminated advisory to wait for ingest before acting without it.
        self.patience, self.wait_delay = patience, wait_delay
        self.durable = durable
        self.stats = DeadLetterStats()
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        self._stopping.clear()
        stream = self.subjects.advisories_stream
        sub = await self.js.pull_subscribe_bind(self.durable, stream=stream)
        try:
            while not self._stopping.is_set():
                try:
                    msgs = await sub.fetch(20, timeout=self.fetch_timeout)
                except TimeoutError:  # = asyncio.TimeoutError (nats-py raises both kinds)
                    continue
                except Exception as exc:
                    log.warning("advisory fetch failed: %s", exc)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    await self.handle(msg)
        finally:
            await sub.unsubscribe()

    async def handle(self, msg: Msg) -> None:
        """Act on one advisory and ack it; on trouble, nak it for a later try."""
        attempt = msg.metadata.num_delivered
        try:
            adv = ADVISORY_DECODER.decode(msg.data)
        except msgspec.DecodeError as exc:
            log.warning("unreadable advisory on %s: %s", msg.subject, exc)
            await msg.term()
            return
        try:
            if ".MAX_DELIVERIES." in msg.subject:
                done = await self.max_deliveries(adv)
            else:
                done = await self.terminated(adv, give_up=attempt >= self.patience)
        except Exception as exc:
            self.stats.errors += 1
            if not is_transient(exc) and attempt >= self.patience:
                log.error("advisory %s seq %d dropped: %s", adv.type, adv.stream_seq, exc)
                await msg.term()
                return
            log.warning("advisory for seq %d not handled yet: %s", adv.stream_seq, exc)
            await msg.nak(delay=min(30.0, self.wait_delay * attempt))
            return
        if done:
            await msg.ack()
        else:
            self.stats.waits += 1
            await msg.nak(delay=self.wait_delay)

    async def max_deliveries(self, adv: Advisory) -> bool:
        job_id = await dlq.from_max_deliveries(self.js, self.db, self.subjects, adv)
        if job_id is None:
            log.info("job message %d already gone (handled, or acked late)", adv.stream_seq)
            return True
        self.stats.dead_lettered += 1
        log.warning("job %s dead-lettered: %s", job_id, MAX_DELIVERIES_REASON)
        return True

    async def terminated(self, adv: Advisory, *, give_up: bool) -> bool:
        """False: ingest has not folded the job's outcome yet; ask again later."""
        row = await self.db.fetchrow(queries.JOB_BY_STREAM_SEQ, adv.stream_seq)
        state = row["state"] if row is not None else None
        if state not in ("completed", "failed", "cancelled") and not give_up:
            return False
        if row is None:
            log.warning("terminated job message %d: no job known by that sequence", adv.stream_seq)
            return True
        if state in ("completed", "cancelled"):
            self.stats.not_dead += 1
            return True
        letter = await dlq.from_terminated(self.js, self.db, self.subjects, adv, row)
        if letter.payload is None:
            log.warning(
                "job %s terminated with no known spec: it cannot be re-submitted", letter.job_id
            )
        self.stats.dead_lettered += 1
        log.warning("job %s dead-lettered: %s", letter.job_id, letter.reason)
        return True
