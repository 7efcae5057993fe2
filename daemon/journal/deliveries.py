"""The JetStream delivery behind each attempt, as the journal keeps it (table `deliveries`).

Three questions need it after the fact, when no `Msg` object is left to ask:
- a redelivered job: did an attempt of this stream message already end here? Then its terminal
  event is re-sent (same event id) and the message acked; the job does not run again;
- a restart: which interrupted attempts can be handed back now? Their ack subject (the message's
  reply subject) takes a `-NAK` from any connection;
- is the hand-back still safe? JetStream acts on a nak by stream sequence, whoever holds the
  message now, so a stale nak would hand a job running on another node to a third one. The nak
  is only sent while JetStream's own lease (`ack_wait` since the last confirmed `+WPI`) still
  runs, i.e. while the message cannot have gone anywhere else yet.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

# Every statement names the attempt by (tenant, job_id, attempt): two tenants may use one job id.
INSERT = """
INSERT INTO deliveries (tenant, job_id, attempt, stream_seq, reply, alive_at)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT (tenant, job_id, attempt) DO UPDATE SET
    stream_seq = excluded.stream_seq, reply = excluded.reply, alive_at = excluded.alive_at
"""
_ATTEMPT = "tenant = ? AND job_id = ? AND attempt = ?"
ALIVE = f"UPDATE deliveries SET alive_at = ? WHERE {_ATTEMPT}"
TERMINAL = f"""
UPDATE deliveries SET terminal_event = ? WHERE {_ATTEMPT} AND terminal_event IS NULL
"""
SETTLED = f"UPDATE deliveries SET settled_at = ? WHERE {_ATTEMPT}"
SELECT_ENDED = """
SELECT d.attempt, d.terminal_event, o.kind FROM deliveries d
LEFT JOIN outbox o ON o.event_id = d.terminal_event
WHERE d.tenant = ? AND d.job_id = ? AND d.stream_seq = ? AND d.terminal_event IS NOT NULL
ORDER BY d.attempt DESC LIMIT 1
"""
_SAME_ATTEMPT = "j.tenant = d.tenant AND j.job_id = d.job_id AND j.attempt = d.attempt"
# Attempts recovery found in hand (interrupted) whose message nobody has settled since.
SELECT_INTERRUPTED = f"""
SELECT d.job_id, d.attempt, d.stream_seq, d.reply, d.alive_at, d.tenant FROM deliveries d
JOIN jobs j ON {_SAME_ATTEMPT}
WHERE j.state = 'interrupted' AND d.settled_at IS NULL AND d.terminal_event IS NULL
ORDER BY d.alive_at
"""
# Attempts that ended here (their terminal event journaled) whose ack or term was never
# confirmed: a crash between the two. Marked settled once the server confirms it.
SELECT_ENDED_UNSETTLED = """
SELECT d.job_id, d.attempt, d.stream_seq, d.reply, d.alive_at, d.tenant, d.terminal_event,
       o.kind FROM deliveries d
LEFT JOIN outbox o ON o.event_id = d.terminal_event
WHERE d.terminal_event IS NOT NULL AND d.settled_at IS NULL
ORDER BY d.alive_at
"""
# Deliveries outlive no attempt: prune removes them with (after) their jobs row.
PRUNE = f"""DELETE FROM deliveries WHERE rowid IN (SELECT d.rowid FROM deliveries d
    LEFT JOIN jobs j ON {_SAME_ATTEMPT}
    WHERE j.job_id IS NULL LIMIT ?)"""


@dataclass(frozen=True, slots=True)
class Delivery:
    job_id: str
    attempt: int
    stream_seq: int
    #: The message's reply subject: `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.…`.
    reply: str
    #: When JetStream last confirmed (accept or a `+WPI` it answered) it held the message for us.
    alive_at: float
    #: Whose job: with job_id, what names it.
    tenant: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Delivery:
        return cls(**dict(row))


@dataclass(frozen=True, slots=True)
class Unsettled:
    """An attempt that ended here whose message's ack (or term) was never confirmed."""

    delivery: Delivery
    event_id: str
    #: The terminal event's kind; None once pruned from the outbox (then it was sent).
    kind: str | None

    @property
    def verb(self) -> bytes:
        return b"+ACK" if self.kind in (None, "completed") else b"+TERM"


@dataclass(frozen=True, slots=True)
class Ended:
    """An attempt of a stream message that already ended on this node."""

    attempt: int
    event_id: str
    #: The terminal event's kind (`completed`, `failed`, `cancelled`); None once pruned.
    kind: str | None
