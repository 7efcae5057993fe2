"""The one door job code reports through: journal the state and its events, wake the outbox.

Job code never publishes to NATS itself (events would be lost in an outage); it records into the
journal (state + outbox rows in one transaction) and, before an ack or term, waits until the
terminal event has been PubAck'd by the outbox publisher.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol, cast

from daemon.journal.deliveries import Delivery
from daemon.journal.rows import JobState, JobUpdate
from daemon.journal.store import Journal
from schemas.events import Accepted, Event


class OutboxPort(Protocol):
    def notify(self) -> None: ...

    async def wait_sent(self, event_id: str, timeout: float) -> bool:  # noqa: ASYNC109
        """True once the event with this id has been PubAck'd (False on timeout)."""
        ...


def new_event_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


class Reporter:
    def __init__(self, journal: Journal, outbox: OutboxPort, node_id: str) -> None:
        self.journal = journal
        self.outbox = outbox
        self.node_id = node_id

    async def record(
        self,
        job_id: str | None,
        state: str | None,
        *events: Event,
        spec: bytes | None = None,
        delivery: Delivery | None = None,
    ) -> None:
        """`state` None records events only; `spec` is kept for recovery's partial cleanup;
        `delivery` is the JetStream delivery behind an accepted attempt."""
        updates = []
        if job_id is not None and state is not None:
            first = events[0] if events else None
            extra: dict[str, Any] = {}
            if isinstance(first, Accepted):
                extra = {"pool": first.pool, "priority": first.priority}
                extra["stream_seq"] = first.stream_seq
            if spec is not None:
                extra["spec"] = spec.decode(errors="replace")
            attempt = int(getattr(first, "attempt", 1))
            # Every job event names its tenant: with the job id, what names the journal's row.
            extra["tenant"] = str(getattr(first, "tenant", ""))
            updates.append(JobUpdate(job_id, attempt, cast(JobState, state), **extra))
        await self.journal.record(updates, list(events), delivery=delivery)
        self.outbox.notify()

    async def record_and_wait(
        self, job_id: str | None, state: str, event: Event, *, before: Sequence[Event] = ()
    ) -> None:
        """Journal a terminal event and wait for its PubAck: only then may the message be acked.
        `before`: events of the job that go ahead of it, in the same commit.

        Waits as long as NATS is away (the job keeps its in-progress acks meanwhile): acking
        before the event is out could lose the only record of the outcome.
        """
        await self.record(job_id, state, *before, event)
        while not await self.outbox.wait_sent(event.event_id, 30.0):
            pass
