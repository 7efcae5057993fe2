"""Earliest deadline first, the leader's pure parts: the release order, how many a tier's due
lane gets, the released copy's headers, how a held message is read, the held and due subject
forms, and the free slots the heartbeats report. No network."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from nats.js.api import RawStreamMsg

from control.deadlines.release import (
    Held,
    due_headers,
    free_slots,
    held_of,
    release_order,
    to_release,
)
from control.nodes import FleetNode
from schemas.codec import encode
from schemas.jobs import JobSpec
from schemas.nodes import NodeState
from schemas.operations import Probe
from schemas.subjects import HeldJob, StoredJob, Subjects, parse_held, parse_stored
from tests.support.noderecords import node_record

S = Subjects("fl", 8)
T0 = datetime(2030, 1, 1, tzinfo=UTC)


def held(seq: int, deadline: float, job_id: str | None = None) -> Held:
    job = HeldJob("acme", "cpu", "normal", job_id or f"j{seq}")
    return Held(seq, job, deadline, b"{}", {})


def spec(job_id: str = "j1", deadline: datetime | None = None) -> JobSpec:
    return JobSpec(job_id=job_id, tenant="acme", input="file:///in.mp4", operation=Probe(),
                   deadline=deadline)  # fmt: skip


def raw(
    subject: str, data: bytes, seq: int = 7, headers: dict[str, str] | None = None
) -> RawStreamMsg:
    return RawStreamMsg(subject=subject, seq=seq, data=data, headers=headers)


# -- release_order ----------------------------------------------------------------------------
def test_release_order_is_earliest_deadline_first() -> None:
    a, b, c = held(1, 300.0), held(2, 100.0), held(3, 200.0)
    assert [h.seq for h in release_order([a, b, c])] == [2, 3, 1]


def test_equal_deadlines_keep_stream_order() -> None:
    late, early, mid = held(9, 50.0), held(2, 50.0), held(5, 50.0)
    assert [h.seq for h in release_order([late, early, mid])] == [2, 5, 9]


def test_no_deadline_goes_last_in_stream_order() -> None:
    none_a, none_b = held(1, math.inf), held(4, math.inf)
    dated = held(8, 1e12)
    assert [h.seq for h in release_order([none_b, dated, none_a])] == [8, 1, 4]


def test_release_order_of_nothing() -> None:
    assert release_order([]) == []


# -- to_release --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("backlog", "free", "margin", "expected"),
    [
        (0, 0, 2, 2),  # an idle pool still gets its margin
        (0, 3, 1, 4),  # every free slot plus the margin
        (1, 3, 1, 3),  # less what waits in the due lane already
        (4, 3, 1, 0),  # the lane is full
        (10, 3, 1, 0),  # over full: never negative
        (0, -5, 2, 2),  # a negative free count is read as none free
        (1, -5, 2, 1),
        (0, 0, 0, 0),
    ],
)
def test_to_release(backlog: int, free: int, margin: int, expected: int) -> None:
    assert to_release(backlog, free, margin) == expected


# -- due_headers -------------------------------------------------------------------------------
def test_due_headers_drop_the_servers_and_keep_the_rest() -> None:
    h = Held(3, HeldJob("acme", "cpu", "high", "job-7"), 1.0, b"{}", {
        "Nats-Msg-Id": "acme.job-7",
        "Nats-Expected-Stream": "FL_JOBS",
        "nats-rollup": "sub",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Custom": "kept",
    })  # fmt: skip
    assert due_headers(h) == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "X-Custom": "kept",
        "Nats-Msg-Id": "acme.job-7.due",
    }
    assert h.headers["Nats-Msg-Id"] == "acme.job-7"  # the held message's own are left alone


def test_due_headers_of_a_held_message_without_headers() -> None:
    assert due_headers(held(1, 1.0, "x")) == {"Nats-Msg-Id": "acme.x.due"}


# -- held_of -----------------------------------------------------------------------------------
def test_held_of_reads_subject_deadline_and_headers() -> None:
    due = T0 + timedelta(hours=1)
    body = encode(spec("job-1", due))
    msg = raw(S.timed("acme", "cpu", "high", "job-1"), body, 42, {"traceparent": "t"})
    got = held_of(msg)
    assert got is not None
    assert got.seq == 42
    assert got.job == HeldJob("acme", "cpu", "high", "job-1")
    assert got.group == ("cpu", "high")
    assert got.deadline == due.timestamp()
    assert got.data == body
    assert got.headers == {"traceparent": "t"}


def test_held_of_takes_a_deadline_without_offset_as_utc() -> None:
    wire = msgspec.json.decode(encode(spec("j1")))
    wire["deadline"] = "2030-01-01T02:00:00"  # naive: no offset
    body = msgspec.json.encode(wire)
    got = held_of(raw(S.timed("acme", "cpu", "normal", "j1"), body))
    assert got is not None
    assert got.deadline == (T0 + timedelta(hours=2)).timestamp()


def test_held_of_a_job_without_deadline_is_released_last() -> None:
    got = held_of(raw(S.timed("acme", "cpu", "normal", "j1"), encode(spec("j1"))))
    assert got is not None and got.deadline == math.inf


@pytest.mark.parametrize("body", [b"", b"not json", b"{}", b'{"job_id": 3}'])
def test_held_of_an_undecodable_body_is_released_last(body: bytes) -> None:
    got = held_of(raw(S.timed("acme", "cpu", "low", "j1"), body))
    assert got is not None
    assert got.deadline == math.inf
    assert got.job == HeldJob("acme", "cpu", "low", "j1")
    assert got.data == body


@pytest.mark.parametrize(
    "subject",
    [
        S.job_stored("acme", "cpu", "normal", "j1"),
        S.due_stored("acme", "cpu", "normal", "j1"),
        S.submit("acme", "cpu", "normal", "j1"),
        "fl.timed.acme.cpu.urgent.j1",
        "",
    ],
)
def test_held_of_another_subject_is_none(subject: str) -> None:
    assert held_of(raw(subject, encode(spec("j1", T0)))) is None


def test_held_of_a_message_without_subject_is_none() -> None:
    assert held_of(RawStreamMsg(seq=1, data=b"{}")) is None


# -- parse_held / parse_stored -----------------------------------------------------------------
def test_parse_held_round_trips_timed() -> None:
    assert parse_held(S.timed("acme", "gpu", "low", "job-9")) == HeldJob(
        "acme", "gpu", "low", "job-9"
    )


@pytest.mark.parametrize(
    "subject",
    [
        "fl.timed.acme.cpu.normal",  # a token short
        "fl.timed.acme.cpu.normal.j1.x",  # a token over
        "fl.timed.cpu.normal.j1",
        "fl.timed.acme.cpu.urgent.j1",  # not a priority
        "fl.timed.acme.cpu.NORMAL.j1",
        "fl.submit.acme.cpu.normal.j1",  # not held
        "fl.jobs.cpu.normal.3.j1",
        "",
    ],
)
def test_parse_held_refuses_other_shapes(subject: str) -> None:
    with pytest.raises(ValueError):
        parse_held(subject)


def test_parse_stored_accepts_the_due_form() -> None:
    subject = S.due_stored("acme", "cpu", "high", "job-0042")
    assert subject.split(".")[1] == "due" and len(subject.split(".")) == 7
    assert parse_stored(subject) == StoredJob("cpu", "high", 5, "acme", "job-0042")


@pytest.mark.parametrize(
    "subject",
    [
        "fl.due.cpu.high.5.job-0042",  # six tokens: the due form always names the tenant
        "fl.due.cpu.high.5.acme.job-0042.x",
        "fl.due.cpu.high.x.acme.job-0042",
    ],
)
def test_parse_stored_refuses_other_due_shapes(subject: str) -> None:
    with pytest.raises(ValueError):
        parse_stored(subject)


# -- free_slots --------------------------------------------------------------------------------
def fleet_node(
    node_id: str,
    pools: list[str],
    free: dict[str, int],
    open_tiers: dict[str, list[str]] | None = None,
    state: NodeState = "online",
) -> FleetNode:
    rec = node_record(node_id, pools=pools)
    beat = msgspec.structs.replace(rec.heartbeat, free_slots=free, open_tiers=open_tiers or {})
    return FleetNode(msgspec.structs.replace(rec, heartbeat=beat), state)


def test_free_slots_sums_the_online_nodes_of_the_pool() -> None:
    nodes = [
        fleet_node("a", ["cpu"], {"cpu": 2}),
        fleet_node("b", ["cpu", "nvenc"], {"cpu": 3, "nvenc": 1}),
        fleet_node("c", ["nvenc"], {"nvenc": 4}),
    ]
    assert free_slots(nodes, "cpu", "normal") == 5
    assert free_slots(nodes, "nvenc", "high") == 5
    assert free_slots(nodes, "qsv", "normal") == 0
    assert free_slots([], "cpu", "normal") == 0


@pytest.mark.parametrize("state", ["offline", "draining"])
def test_free_slots_skips_nodes_not_online(state: NodeState) -> None:
    nodes = [
        fleet_node("a", ["cpu"], {"cpu": 2}),
        fleet_node("b", ["cpu"], {"cpu": 7}, state=state),
    ]
    assert free_slots(nodes, "cpu", "normal") == 2


def test_free_slots_skips_a_node_not_serving_the_pool() -> None:
    # Free slots reported for a pool the capabilities do not name do not count.
    nodes = [fleet_node("a", ["nvenc"], {"cpu": 2, "nvenc": 1})]
    assert free_slots(nodes, "cpu", "normal") == 0


def test_free_slots_of_a_pool_the_heartbeat_does_not_report() -> None:
    assert free_slots([fleet_node("a", ["cpu"], {})], "cpu", "normal") == 0


def test_free_slots_follows_the_open_tiers() -> None:
    nodes = [
        fleet_node("windowed", ["cpu"], {"cpu": 2}, {"cpu": ["high"]}),
        fleet_node("open", ["cpu"], {"cpu": 3}, {"cpu": ["high", "normal", "low"]}),
        # Open tiers for another pool only: this pool's are all open (a node of before them).
        fleet_node("older", ["cpu", "nvenc"], {"cpu": 5}, {"nvenc": ["high"]}),
        fleet_node("closed", ["cpu"], {"cpu": 7}, {"cpu": []}),
    ]
    assert free_slots(nodes, "cpu", "high") == 2 + 3 + 5
    assert free_slots(nodes, "cpu", "normal") == 3 + 5
    assert free_slots(nodes, "cpu", "low") == 3 + 5
