"""Rows and updates of the node journal, and which states and events need a durable commit."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any, Literal

JobState = Literal[
    "received",
    "running",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
    "handed_back",
    "interrupted",
    "retrying",
]
#: A job in one of these was in hand when the daemon stopped: recovery marks it interrupted.
ACTIVE_STATES: frozenset[str] = frozenset({"received", "running", "paused"})
#: The attempt is over; the row's `finished_at` is set and prune may remove it later.
FINISHED_STATES: frozenset[str] = frozenset(
    {"succeeded", "failed", "cancelled", "handed_back", "interrupted", "retrying"}
)
#: States after which the daemon acks, naks or terms the JetStream message: committed with
#: synchronous=FULL so a power loss cannot undo a decision the broker already acted on.
DURABLE_STATES: frozenset[str] = FINISHED_STATES - {"interrupted"}
#: Telemetry the outbox bound may drop when NATS has been away too long.
DROPPABLE_KINDS: tuple[str, ...] = ("progress",)


def derived_event_id(tenant: str, job_id: str, attempt: int, what: str) -> str:
    """A deterministic event id (a Token: at most 128 characters) so a replay dedups.

    The tenant is in it: two tenants' jobs of one id are two jobs. `-` may occur in tenants and
    job ids alike, so the tenant's length ends the id (`-t<n>`): that keeps every pair apart,
    and apart from the ids of before (which end in `-<what>`). Too long: a hash of it stands in,
    and 40 hex characters never end like either form.
    """
    event_id = f"{job_id}-{attempt}-{what}-{tenant}-t{len(tenant)}"
    if len(event_id) <= 128:
        return event_id
    digest = hashlib.sha256(event_id.encode()).hexdigest()[:40]
    return f"{job_id[:80]}-{digest}"


@dataclass(frozen=True, slots=True)
class JobUpdate:
    """An insert or state change of one attempt; fields left None keep their stored value."""

    job_id: str
    attempt: int
    state: JobState
    stream_seq: int | None = None
    subject: str | None = None
    pool: str | None = None
    priority: str | None = None
    spec: str | None = None
    error: str | None = None
    scratch_dir: str | None = None
    temp_paths: list[str] | None = None
    #: Whose job: (tenant, job_id, attempt) names the row.
    tenant: str = ""

    def params(self, now: float) -> tuple[Any, ...]:
        started = now if self.state == "running" else None
        finished = now if self.state in FINISHED_STATES else None
        temp = None if self.temp_paths is None else json.dumps(self.temp_paths)
        return (
            self.tenant,
            self.job_id,
            self.attempt,
            self.state,
            self.stream_seq,
            self.subject,
            self.pool,
            self.priority,
            self.spec,
            self.error,
            self.scratch_dir,
            temp,
            now,
            started,
            finished,
            now,
        )


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    attempt: int
    state: JobState
    stream_seq: int | None
    subject: str | None
    pool: str | None
    priority: str | None
    spec: str | None
    error: str | None
    scratch_dir: str | None
    received_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    temp_paths: list[str] = field(default_factory=list)
    tenant: str = ""

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> JobRow:
        values = dict(row)
        values["temp_paths"] = json.loads(values.pop("temp_paths") or "[]")
        return cls(**values)


@dataclass(frozen=True, slots=True)
class OutboxRow:
    seq: int
    event_id: str
    subject: str
    payload: bytes
    kind: str
    terminal: bool
    created_at: float
    sent_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> OutboxRow:
        values = dict(row)
        values["terminal"] = bool(values["terminal"])
        values["payload"] = bytes(values["payload"])
        return cls(**values)
