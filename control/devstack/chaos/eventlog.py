"""Everything on the events stream, read incrementally with short-lived ephemeral consumers.

A message counts as a trusted event exactly when the control plane's ingest would take it: it
decodes as an event and its subject names the event's own node and kind. Everything else (the
malformed storm, spoofed subjects) is kept only as a stream sequence, for the stream-versus-
Postgres count.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import msgspec
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from schemas.codec import DecodeError
from schemas.events import Failed, kind_of
from schemas.registry import EVENT_DECODER

FETCH_BATCH = 1000
#: Bound on the fetches of one catch-up (each up to FETCH_BATCH messages).
MAX_FETCHES = 2000
TERMINAL_KINDS = frozenset({"completed", "cancelled"})


@dataclass(frozen=True, slots=True)
class Ev:
    seq: int
    event_id: str
    kind: str
    node_id: str
    ts: float
    job_id: str | None = None
    attempt: int = 0
    final: bool = False

    @property
    def terminal(self) -> bool:
        return self.kind in TERMINAL_KINDS or (self.kind == "failed" and self.final)


@dataclass
class EventLog:
    stream: str
    subject: str
    next_seq: int = 1
    events: list[Ev] = field(default_factory=list)
    #: seq -> event id for every message that decodes far enough to name one (for the count).
    ids_by_seq: dict[int, str] = field(default_factory=dict)
    untrusted: list[int] = field(default_factory=list)
    messages: int = 0

    async def catch_up(self, js: JetStreamContext) -> int:
        """Read every message stored since the last call; returns how many were new."""
        info = await js.stream_info(self.stream)
        last = info.state.last_seq
        if last < self.next_seq:
            return 0
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=self.next_seq,
            inactive_threshold=30.0,
            mem_storage=True,
        )
        sub = await js.pull_subscribe(self.subject, stream=self.stream, config=config)
        before = self.messages
        try:
            for _ in range(MAX_FETCHES):
                if self.next_seq > last:
                    break
                try:
                    msgs = await sub.fetch(FETCH_BATCH, timeout=2.0)
                except TimeoutError:
                    break
                for msg in msgs:
                    seq = msg.metadata.sequence.stream
                    self._take(seq, msg.subject, msg.data)
                    self.next_seq = max(self.next_seq, seq + 1)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return self.messages - before

    def _take(self, seq: int, subject: str, data: bytes) -> None:
        self.messages += 1
        with contextlib.suppress(msgspec.DecodeError, TypeError, AttributeError):
            raw = msgspec.json.decode(data)
            if isinstance(raw, dict) and isinstance(raw.get("event_id"), str):
                self.ids_by_seq[seq] = raw["event_id"]
        try:
            event = EVENT_DECODER.decode(data)
        except (DecodeError, ValueError):
            self.untrusted.append(seq)
            return
        kind = kind_of(event)
        if subject.split(".")[-2:] != [event.node_id, kind]:
            self.untrusted.append(seq)
            return
        self.events.append(
            Ev(
                seq=seq,
                event_id=event.event_id,
                kind=kind,
                node_id=event.node_id,
                ts=event.ts,
                job_id=getattr(event, "job_id", None),
                attempt=getattr(event, "attempt", 0),
                final=isinstance(event, Failed) and event.final,
            )
        )

    def by_job(self) -> dict[str, list[Ev]]:
        out: dict[str, list[Ev]] = {}
        for ev in self.events:
            if ev.job_id is not None:
                out.setdefault(ev.job_id, []).append(ev)
        return out

    def ended(self) -> set[str]:
        return {e.job_id for e in self.events if e.terminal and e.job_id is not None}


def completed_ids(events: list[Ev]) -> set[str]:
    return {e.event_id for e in events if e.kind == "completed"}
