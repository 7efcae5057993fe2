"""The chaos audit's definitions on hand-made event histories: what counts as run more than once,
lost, stuck, failed, and how redelivery latency is measured. The fleet run (tests/fleet/
test_chaos_short.py) cannot provoke a double run on demand, so the rule is pinned down here."""

from __future__ import annotations

import itertools

from control.devstack.chaos.audit import PhaseTally, classify, redelivery, rerun
from control.devstack.chaos.eventlog import Ev
from control.devstack.chaos.ledger import Episode
from control.devstack.chaos.workload import Submission

_ids = itertools.count(1)


def ev(kind: str, ts: float, node: str = "dev-1", attempt: int = 1, final: bool = False) -> Ev:
    n = next(_ids)
    return Ev(n, f"e{n}", kind, node, ts, "j", attempt, final)


def run_once(node: str = "dev-1", t: float = 0.0, attempt: int = 1) -> list[Ev]:
    return [
        ev("accepted", t, node, attempt),
        ev("started", t + 1, node, attempt),
        ev("progress", t + 2, node, attempt),
        ev("completed", t + 3, node, attempt),
    ]


def test_a_restart_after_a_kill_is_not_a_second_run() -> None:
    killed = run_once()[:3]  # no completion: the kill landed mid-encode
    assert not rerun(killed + run_once("dev-2", 100.0, 2))


def test_two_completions_or_a_start_after_completion_are_second_runs() -> None:
    assert rerun(run_once() + run_once("dev-2", 100.0, 2))
    after = [*run_once(), ev("accepted", 50, "dev-2", 2), ev("started", 51, "dev-2", 2)]
    assert rerun(after)  # ran again after its result was in, even if killed before finishing


def test_the_same_completed_event_twice_is_one_completion() -> None:
    once = run_once()
    assert not rerun([*once, once[-1]])  # a replayed event id is deduplicated, not a rerun


def test_classify_lost_stuck_failed_and_unconfirmed() -> None:
    names = ("ok", "lost", "stuck", "bad", "u")
    subs = [Submission(j, "p", 0.0, confirmed=j != "u") for j in names]
    by_job = {
        "ok": run_once(),
        "lost": run_once()[:2],
        "stuck": run_once()[:1],
        "bad": [ev("accepted", 0), ev("failed", 1, final=True)],
    }
    tally = PhaseTally("p")
    classify(tally, subs, by_job, queued={"stuck"}, pg_states={"ok": "running"})
    assert (tally.submitted, tally.unconfirmed) == (4, 1)
    assert (tally.exactly_once, tally.lost, tally.stuck, tally.failed) == (1, 1, 1, 1)
    assert tally.pg_mismatch == 1  # completed on the stream, not in Postgres


def test_redelivery_runs_from_the_last_event_before_the_kill_to_the_next_accepted() -> None:
    killed = [ev("accepted", 10), ev("started", 11), ev("progress", 12)]
    later = [ev("interrupted", 21), ev("accepted", 42, "dev-2", 2), ev("completed", 50, "dev-2", 2)]
    elsewhere = run_once("dev-2", 0.0)  # ran on another node: not this kill's job
    kill = Episode("daemon_kill", "dev-1", start=20.0)
    assert redelivery([kill], {"a": killed + later, "b": elsewhere}) == [30.0]
