"""The job folding rules as a table, and their order independence over every permutation."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from control.fold import RANK_TERMINAL, JobRow, apply_event, at, claim_of, fold_job
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
from schemas.results import JobResult, OutputFile

T0 = 1_800_000_000.0
J = "job-1"
SHA = "0" * 64


def base(n: int, attempt: int = 1, node: str = "n1") -> dict[str, Any]:
    return {"event_id": f"e{n:03d}", "job_id": J, "node_id": node, "attempt": attempt, "ts": T0 + n}


def acc(n: int, attempt: int = 1, node: str = "n1") -> Accepted:
    return Accepted(
        **base(n, attempt, node), pool="cpu", priority="normal", tenant="acme",
        operation="transcode", stream_seq=7, submitted_ts=T0 - 5,
    )  # fmt: skip


def start(n: int, attempt: int = 1, node: str = "n1") -> Started:
    return Started(**base(n, attempt, node))


def prog(n: int, pct: float, attempt: int = 1, node: str = "n1") -> Progress:
    return Progress(**base(n, attempt, node), percent=pct, fps=25.0, speed=1.5)


def done(n: int, attempt: int = 1, node: str = "n1") -> Completed:
    return Completed(**base(n, attempt, node), result=JobResult(wall_seconds=float(n)))


def fail(n: int, final: bool, attempt: int = 1, node: str = "n1") -> Failed:
    return Failed(
        **base(n, attempt, node), reason=f"boom {n}", error_kind="transient", final=final,
        stderr_tail=f"tail {n}",
    )  # fmt: skip


def cancel(n: int, attempt: int = 1, node: str = "n1") -> Cancelled:
    return Cancelled(**base(n, attempt, node), reason="operator")


def retry(n: int, attempt: int = 1) -> Retrying:
    return Retrying(**base(n, attempt), reason="again", next_attempt=attempt + 1, delay_s=1.0)


def fold(events: list[JobEvent]) -> JobRow:
    row = JobRow(job_id=J, submitted_at=at(T0 + 100))  # as ingest: the first event seen
    fold_job(row, events)
    return row


# (events, state, attempts, node, extra checks)
CASES: list[tuple[str, list[JobEvent], str, int, str | None]] = [
    ("accepted only", [acc(1)], "queued", 1, "n1"),
    ("running", [acc(1), start(2), prog(3, 10)], "running", 1, "n1"),
    ("completed", [acc(1), start(2), prog(3, 50), done(4)], "completed", 1, "n1"),
    ("late progress after done", [acc(1), start(2), done(4), prog(9, 50)], "completed", 1, "n1"),
    ("late started after failed", [acc(1), fail(4, True), start(9)], "failed", 1, "n1"),
    ("non-final failure is not terminal", [acc(1), start(2), fail(3, False)], "queued", 1, "n1"),
    ("retrying requeues", [acc(1), start(2), retry(3)], "queued", 1, "n1"),
    (
        "next attempt runs after a retry",
        [acc(1), start(2), fail(3, False), retry(4), acc(5, 2, "n2"), start(6, 2, "n2")],
        "running", 2, "n2",
    ),
    (
        "a stalled attempt's echo does not move the job back",
        [acc(1), acc(5, 2, "n2"), start(6, 2, "n2"), prog(9, 80, 1), fail(10, False, 1)],
        "running", 2, "n2",
    ),
    ("handed back requeues", [HandedBack(**base(1), reason="no gpu")], "queued", 1, "n1"),
    (
        "interrupted requeues, redelivery runs",
        [acc(1), start(2), Interrupted(**base(3)), acc(4, 2, "n2")],
        "queued", 2, "n2",
    ),
    ("cancelled is terminal", [acc(1), start(2), cancel(3), prog(4, 99)], "cancelled", 1, "n1"),
    (
        "completed beats an earlier failure of another attempt",
        [acc(1), fail(2, True), done(8, 2, "n2")],
        "completed", 2, "n2",
    ),
    ("first of two failures", [fail(5, True, 1, "n1"), fail(3, True, 2, "n2")], "failed", 2, "n2"),
    ("first of two completions", [done(5, 1, "n1"), done(6, 2, "n2")], "completed", 2, "n1"),
    (
        "output events count as running",
        [acc(1), OutputWritten(**base(2), output=OutputFile(uri="/o", size_bytes=1, sha256=SHA))],
        "running", 1, "n1",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "events", "state", "attempts", "node"), CASES)
def test_fold_table(
    name: str, events: list[JobEvent], state: str, attempts: int, node: str | None
) -> None:
    row = fold(events)
    assert (row.state, row.attempts, row.node_id) == (state, attempts, node), name
    assert (row.state_rank == RANK_TERMINAL) == (state in ("completed", "failed", "cancelled"))


@pytest.mark.parametrize(("name", "events", "state", "attempts", "node"), CASES)
def test_every_order_gives_the_same_row(
    name: str, events: list[JobEvent], state: str, attempts: int, node: str | None
) -> None:
    expected = fold(events)
    first = expected.submitted_at
    for order in itertools.permutations(events):
        row = JobRow(job_id=J, submitted_at=first)
        for event in order:  # one at a time, as batches would bring them
            apply_event(row, event)
        assert row == expected, (name, [e.event_id for e in order])


def test_details() -> None:
    row = fold([acc(1), start(2), prog(3, 40), fail(4, False), acc(5, 2), start(6, 2), done(9, 2)])
    assert row.tenant == "acme" and row.pool == "cpu" and row.operation == "transcode"
    assert row.stream_seq == 7
    assert row.submitted_at == at(T0 - 5) and row.queued_at == at(T0 - 5)
    assert row.started_at == at(T0 + 2) and row.finished_at == at(T0 + 9)
    assert row.percent == 100.0 and row.fps == 25.0
    assert row.last_error == "boom 4" and row.stderr_tail == "tail 4"
    assert row.result is not None and '"wall_seconds":9.0' in row.result


def test_progress_follows_the_latest_attempt() -> None:
    row = fold([acc(1), prog(2, 10, 2), prog(8, 90, 1)])
    assert row.percent == 10 and row.progress_attempt == 2


def test_failed_job_keeps_its_last_progress() -> None:
    row = fold([prog(2, 30), fail(3, True), prog(1, 10)])
    assert (row.state, row.percent) == ("failed", 30)


def test_events_of_a_resubmitted_run_before_the_cutoff_are_ignored() -> None:
    row = JobRow(job_id=J, submitted_at=at(T0), resubmitted_at=at(T0 + 5))
    fold_job(row, [fail(4, True), acc(6), start(7)])
    assert (row.state, row.last_error) == ("running", None)


def test_no_change_is_reported() -> None:
    row = fold([acc(1), start(2)])
    assert fold_job(row, [start(2)]) is False
    assert fold_job(row, [prog(3, 5)]) is True


def test_claims() -> None:
    assert claim_of(fail(1, True)) == (RANK_TERMINAL, "failed")
    assert claim_of(fail(1, False))[1] == "queued"
