"""Pure rules that fold a job's events into its current state, whatever order they arrive in.

Delivery is at least once and several control-plane instances ingest at once, so a job's events
arrive duplicated (deduplicated before this, by event id) and out of order. Every rule here is a
max or a min over the events seen, so the folded row depends on the set of events, not on their
order:

- A non-terminal event claims the state with the key (attempt, rank, ts, event_id); the largest
  key wins. Ranks: accepted → queued (1), started/progress/output → running (2), retrying /
  handed_back / interrupted / non-final failed → queued again (3). A late event of an earlier
  attempt (a stalled node's echo) therefore never moves the job back.
- Terminal events (completed, cancelled, failed with final=True) beat every non-terminal one;
  `Failed(final=False)` is not terminal. Between terminals, `completed` wins (its output exists:
  calling the job failed would invite a duplicate run); otherwise the first by (ts, event_id)
  wins, later ones being echoes of stale deliveries.
- attempts = max(attempt); submitted_at, queued_at and started_at are minima; progress is the
  latest by (attempt, ts); last_error/stderr_tail come from the latest failed or cancelled event.
- Events not newer than `resubmitted_at` (set when a dead letter is re-submitted) belong to the
  earlier run and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter

import msgspec

from schemas.events import (
    Accepted,
    Cancelled,
    Completed,
    Failed,
    HandedBack,
    Interrupted,
    JobEvent,
    OutputWritten,
    Progress,
    Retrying,
    Started,
)

RANK_SUBMITTED, RANK_QUEUED, RANK_RUNNING, RANK_REQUEUED, RANK_TERMINAL = range(5)
#: Node id of events the control plane writes itself (a dead letter's `failed`).
CONTROL_NODE = "control"
_EPOCH = datetime.fromtimestamp(0, UTC)


def at(ts: float) -> datetime:
    """An event's epoch seconds as the timestamptz the database stores (microseconds, UTC)."""
    return datetime.fromtimestamp(ts, UTC)


@dataclass(slots=True)
class JobRow:
    """The folded columns of one `jobs` row (the table has a few more: spec, dead_lettered…)."""

    job_id: str
    submitted_at: datetime
    tenant: str = ""
    pool: str = ""
    priority: str = ""
    operation: str = ""
    state: str = "submitted"
    state_rank: int = RANK_SUBMITTED
    state_ts: datetime | None = None
    state_event_id: str | None = None
    node_id: str | None = None
    attempts: int = 0
    stream_seq: int | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    percent: float | None = None
    fps: float | None = None
    speed: float | None = None
    progress_attempt: int = 0
    progress_at: datetime | None = None
    last_error: str | None = None
    stderr_tail: str | None = None
    error_at: datetime | None = None
    resubmitted_at: datetime | None = None
    #: JSON of the winning `completed` result when this fold set it; None keeps the stored one.
    result: str | None = None


#: The `jobs` columns a fold reads and writes, in JobRow order.
FOLD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(JobRow))
#: A row's values in FOLD_COLUMNS order (a cheap snapshot to tell whether a fold changed it).
row_values = attrgetter(*FOLD_COLUMNS)


def claim_of(event: JobEvent) -> tuple[int, str]:
    """The (rank, state) an event claims for its job."""
    match event:
        case Accepted():
            return RANK_QUEUED, "queued"
        case Started() | Progress() | OutputWritten():
            return RANK_RUNNING, "running"
        case Completed():
            return RANK_TERMINAL, "completed"
        case Cancelled():
            return RANK_TERMINAL, "cancelled"
        case Failed(final=True):
            return RANK_TERMINAL, "failed"
        case Failed() | Retrying() | HandedBack() | Interrupted():
            return RANK_REQUEUED, "queued"
    raise TypeError(f"not a job event: {event!r}")


def _min(a: datetime | None, b: datetime) -> datetime:
    return b if a is None or b < a else a


def _terminal_key(state: str, ts: datetime, event_id: str) -> tuple[int, datetime, str]:
    return (0 if state == "completed" else 1, ts, event_id)


def _claims(row: JobRow, event: JobEvent, rank: int, state: str, t: datetime, prior: int) -> bool:
    if rank == RANK_TERMINAL:
        if row.state_rank < RANK_TERMINAL:
            return True
        held = _terminal_key(row.state, row.state_ts or _EPOCH, row.state_event_id or "")
        return _terminal_key(state, t, event.event_id) < held
    if row.state_rank == RANK_TERMINAL:
        return False
    held_key = (prior, row.state_rank, row.state_ts or _EPOCH, row.state_event_id or "")
    return (event.attempt, rank, t, event.event_id) > held_key


def _details(row: JobRow, event: JobEvent, t: datetime) -> None:
    match event:
        case Accepted():
            row.tenant = row.tenant or event.tenant
            row.pool = row.pool or event.pool
            row.priority = row.priority or event.priority
            row.operation = row.operation or event.operation
            if event.stream_seq:
                row.stream_seq = max(row.stream_seq or 0, event.stream_seq)
            queued = at(event.submitted_ts) if event.submitted_ts is not None else t
            row.queued_at = _min(row.queued_at, queued)
            row.submitted_at = min(row.submitted_at, queued)
        case Started():
            row.started_at = _min(row.started_at, t)
        case Progress():
            if (event.attempt, t) > (row.progress_attempt, row.progress_at or _EPOCH):
                row.percent, row.fps, row.speed = event.percent, event.fps, event.speed
                row.progress_attempt, row.progress_at = event.attempt, t
        case Failed() | Cancelled():
            if row.error_at is None or t >= row.error_at:
                row.last_error, row.error_at = event.reason, t
                row.stderr_tail = (event.stderr_tail or None) if isinstance(event, Failed) else None


def apply_event(row: JobRow, event: JobEvent) -> None:
    """Fold one event into `row` in place."""
    t = at(event.ts)
    if row.resubmitted_at is not None and t <= row.resubmitted_at:
        return  # an echo of the run before the dead letter was re-submitted
    prior = row.attempts
    row.attempts = max(row.attempts, event.attempt)
    row.submitted_at = min(row.submitted_at, t)
    _details(row, event, t)
    rank, state = claim_of(event)
    if _claims(row, event, rank, state, t, prior):
        row.state, row.state_rank, row.state_ts, row.state_event_id = state, rank, t, event.event_id
        if event.node_id != CONTROL_NODE:
            row.node_id = event.node_id
        if rank == RANK_TERMINAL:
            row.finished_at = t
            if isinstance(event, Completed):
                row.result = msgspec.json.encode(event.result).decode()
    if row.state == "completed":
        row.percent = 100.0


def fold_job(row: JobRow, events: Iterable[JobEvent]) -> bool:
    """Fold `events` into `row`; True when the row changed."""
    before = row_values(row)
    for event in sorted(events, key=_order):
        apply_event(row, event)
    return row_values(row) != before


def _order(event: JobEvent) -> tuple[float, str]:
    return event.ts, event.event_id
