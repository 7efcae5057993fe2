"""Fair shares: the node's book (daemon.pull.shares), the lanes they pull through and the
topology setting that names them."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest

from control.topology import CANARY_TENANT, TopologySettings, jobs_stream_config
from daemon.pull.shares import ShareBook
from schemas.subjects import Subjects, decode_shares, encode_shares


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(
    book: ShareBook, clock: Clock, waiting: dict[str, int], slots: int,
    seconds: dict[str, float], starts: int,
) -> list[str]:  # fmt: skip
    """Simulate a node: `slots` slots, each job of tenant t taking seconds[t]; `waiting` jobs
    per tenant (consumed). Returns the tenants in start order."""
    running: list[tuple[float, object]] = []
    order: list[str] = []
    while len(order) < starts:
        while len(running) < slots:
            lanes = [t for t, n in waiting.items() if n > 0]
            if not lanes:
                break
            tenant = book.order(lanes, lambda t: t)[0]
            waiting[tenant] -= 1
            start = book.started(tenant)
            running.append((clock.now + seconds[tenant], start))
            order.append(tenant)
        running.sort(key=lambda r: r[0])
        end, start = running.pop(0)
        clock.now = end
        book.ended(start)  # type: ignore[arg-type]
    return order


def test_starts_follow_the_weights_with_one_slot() -> None:
    clock = Clock()
    book = ShareBook(clock)
    book.weights = {"news": 1.0, "studio": 3.0}
    order = run(book, clock, {"news": 100, "studio": 100}, 1, {"news": 1.0, "studio": 1.0}, 40)
    assert Counter(order) == {"studio": 30, "news": 10}
    # Never more than three studio jobs in a row: news waits for its turn, no longer.
    assert "studio" * 4 not in "".join("studio" if t == "studio" else "n" for t in order)


def test_slot_time_not_job_count_is_shared() -> None:
    """A tenant whose jobs are four times longer gets a quarter of the starts at equal weight."""
    clock = Clock()
    book = ShareBook(clock)
    book.weights = {"long": 1.0, "short": 1.0}
    order = run(book, clock, {"long": 500, "short": 500}, 4, {"long": 4.0, "short": 1.0}, 300)
    counts = Counter(order[50:])  # after the first estimates were learned
    used = {"long": counts["long"] * 4.0, "short": counts["short"] * 1.0}
    assert used["long"] / used["short"] == pytest.approx(1.0, rel=0.1)


def test_a_burst_on_an_idle_node_already_alternates() -> None:
    """Before anything has run, each start is charged an estimate, so four free slots do not
    all go to the first tenant."""
    book = ShareBook(Clock())
    book.weights = {"a": 1.0, "b": 1.0}
    started = []
    for _ in range(4):
        tenant = book.order(["a", "b"], lambda t: t)[0]
        book.started(tenant)
        started.append(tenant)
    assert Counter(started) == {"a": 2, "b": 2}


def test_a_returning_tenant_keeps_no_credit_for_its_idle_time() -> None:
    clock = Clock()
    book = ShareBook(clock)
    book.weights = {"news": 1.0, "studio": 1.0}
    # Studio alone for 20 jobs.
    alone = run(book, clock, {"studio": 20}, 1, {"studio": 1.0, "news": 1.0}, 20)
    assert set(alone) == {"studio"}
    # News comes: it goes next (it is under its share), then they alternate; it does not get
    # twenty starts in a row to make up for the time it had nothing to run.
    order = run(book, clock, {"studio": 50, "news": 50}, 1, {"studio": 1.0, "news": 1.0}, 10)
    assert order[0] == "news"
    assert max(len(run_) for run_ in "".join(t[0] for t in order).replace("s", " ").split()) <= 2


def test_a_tenant_the_weights_do_not_name_counts_as_weight_one() -> None:
    book = ShareBook(Clock())
    assert book.weight("someone") == 1.0


def test_new_weights_rescale_use_so_nobody_jumps_ahead() -> None:
    clock = Clock()
    book = ShareBook(clock)
    book.weights = {"a": 1.0, "b": 1.0}
    run(book, clock, {"a": 10, "b": 10}, 1, {"a": 1.0, "b": 1.0}, 20)
    before = {t: book.use(t) * book.weight(t) for t in "ab"}
    book.reweigh({"a": 2.0, "b": 1.0})
    assert {t: book.use(t) * book.weight(t) for t in "ab"} == pytest.approx(before)


def test_fair_pools_have_a_lane_per_tenant_and_capture_only_their_tenants() -> None:
    topo = msgspec.convert(
        {"pools": ["cpu", "gpu"], "shares": {"cpu": {"studio": 3, "news": 1}}}, TopologySettings
    )
    assert topo.shares["cpu"] == {"studio": 3.0, "news": 1.0, CANARY_TENANT: 1.0}
    subjects = topo.subjects(Subjects("fl"))
    lanes = subjects.lanes("cpu", "high")
    # Each tenant's due lane (deadline jobs, released by the leader) comes before its own.
    assert [(lane.consumer, lane.tenant, lane.due) for lane in lanes] == [
        ("due-cpu-high~canary", "canary", True),
        ("jobs-cpu-high~canary", "canary", False),
        ("due-cpu-high~news", "news", True),
        ("jobs-cpu-high~news", "news", False),
        ("due-cpu-high~studio", "studio", True),
        ("jobs-cpu-high~studio", "studio", False),
    ]
    assert lanes[3].filter == "fl.jobs.cpu.high.*.news.*"
    assert lanes[2].filter == "fl.due.cpu.high.*.news.*"
    # The stored subjects of a news job match its lanes' filters, as the server will see them.
    for lane, stored_at in (
        (lanes[3], subjects.job_stored("news", "cpu", "high", "j1")),
        (lanes[2], subjects.due_stored("news", "cpu", "high", "j1")),
    ):
        pairs = zip(lane.filter.split("."), stored_at.split("."), strict=True)
        assert all(f in ("*", s) for f, s in pairs)
    assert [lane.tenant for lane in subjects.lanes("gpu", "low")] == [None, None]
    assert subjects.lane("cpu", "low", "intruder") is None
    assert subjects.lane("gpu", "low", "intruder") is not None
    captured = jobs_stream_config(subjects, topo).subjects or []
    assert "fl.submit.news.cpu.normal.*" in captured
    assert "fl.submit.*.gpu.normal.*" in captured
    assert not any(c.startswith("fl.submit.*.cpu.") for c in captured)
    # Held deadline jobs: the same tenants only.
    assert "fl.timed.news.cpu.normal.*" in captured
    assert "fl.timed.*.gpu.normal.*" in captured
    assert not any(c.startswith("fl.timed.*.cpu.") for c in captured)
    assert {"fl.due.cpu.>", "fl.due.gpu.>"} <= set(captured)


def test_bad_shares_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"not in topology\.pools"):
        msgspec.convert({"pools": ["cpu"], "shares": {"gpu": {"a": 1}}}, TopologySettings)
    with pytest.raises(ValueError, match="name no tenant"):
        msgspec.convert({"pools": ["cpu"], "shares": {"cpu": {}}}, TopologySettings)
    with pytest.raises(msgspec.ValidationError, match="> 0"):
        msgspec.convert({"pools": ["cpu"], "shares": {"cpu": {"a": 0}}}, TopologySettings)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"pools": ["cpu"], "shares": {"cpu": {"a.b": 1}}}, TopologySettings)


def test_shares_round_trip_through_the_stream_metadata_and_bad_ones_are_refused() -> None:
    shares = {"cpu": {"b": 1.0, "a": 2.5}}
    assert decode_shares(encode_shares(shares)) == shares
    assert decode_shares(None) == {}
    for bad in ('["cpu"]', '{"cpu": {}}', '{"cpu": {"a": -1}}', '{"cpu": {"a": true}}',
                '{"c.p": {"a": 1}}'):  # fmt: skip
        with pytest.raises(ValueError):
            decode_shares(bad)
