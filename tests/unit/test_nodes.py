"""The one node-state rule, and the tracker's view as KV entries arrive (no servers)."""

from __future__ import annotations

import time
from typing import Any, cast

import msgspec
import pytest
from nats.js.kv import KeyValue

from control.alerts.canary import CanaryRunner
from control.alerts.snapshot import fleet_snapshot, node_view
from control.api.fleetfit import why_not
from control.nodes import NodeTracker, node_state
from schemas.codec import encode
from schemas.jobs import JobSpec
from schemas.nodes import CpuInfo, FfmpegInfo, Heartbeat, NodeCapabilities, NodeRecord
from schemas.operations import Probe
from schemas.registry import NODE_RECORD_DECODER
from schemas.subjects import Subjects

NOW = 1_000_000.0


def record(node_id: str, ts: float = NOW, state: str = "online") -> bytes:
    caps = NodeCapabilities(
        node_id=node_id, hostname=node_id, daemon_version="0.1.0",
        cpu=CpuInfo(model="x", physical_cores=2, logical_cores=4), memory_total_bytes=1 << 30,
        disk_total_bytes=1 << 40, disk_free_bytes=1 << 39,
        ffmpeg=FfmpegInfo(path="/usr/bin/ffmpeg", version="7.1"), pools=["cpu"],
    )  # fmt: skip
    hb = Heartbeat(node_id=node_id, ts=ts, state=state)  # type: ignore[arg-type]
    return encode(NodeRecord(capabilities=caps, heartbeat=hb))


_revision = 0


def entry(key: str, value: bytes | None = None, op: str | None = None) -> KeyValue.Entry:
    global _revision
    _revision += 1
    return KeyValue.Entry("b", key, value, _revision, 0, None, op)


def tracker(**kw: Any) -> NodeTracker:
    return NodeTracker(cast(Any, None), Subjects("t"), offline_after=30.0, **kw)


@pytest.mark.parametrize(
    ("reported", "gone", "age", "state"),
    [
        ("online", False, 0.0, "online"),
        ("draining", False, 29.0, "draining"),
        ("online", False, 31.0, "offline"),  # silent too long
        ("draining", True, 0.0, "offline"),  # its entry is gone (clean exit or expiry)
        ("offline", False, 0.0, "offline"),
    ],
)
def test_the_one_rule(reported: str, gone: bool, age: float, state: str) -> None:
    hb = Heartbeat(node_id="n1", ts=NOW - age, state=reported)  # type: ignore[arg-type]
    assert node_state(hb, gone, NOW, 30.0) == state


async def test_a_node_stays_listed_after_its_entry_goes_and_comes_back() -> None:
    t = tracker()
    await t.apply(entry("n1", record("n1")))
    assert [(n.node_id, n.state) for n in t.nodes(NOW)] == [("n1", "online")]
    for i, marker in enumerate(("PURGE", "DEL")):  # expired; back, then a clean exit
        await t.apply(entry("n1", op=marker))
        (n1,) = t.nodes(NOW + i)
        # The verdict is offline; the heartbeat is what the node last said.
        assert (n1.state, n1.heartbeat.state, n1.heartbeat.ts) == ("offline", "online", NOW + i)
        await t.apply(entry("n1", record("n1", ts=NOW + i + 1)))
        assert [n.state for n in t.nodes(NOW + i + 1)] == ["online"]
    assert t.stats.expiries == 2


async def test_nodes_after_reads_on_from_a_node_id_in_order() -> None:
    t = tracker()
    for n in ("n3", "n1", "n4", "n2"):
        await t.apply(entry(n, record(n)))
    await t.apply(entry("n2", op="PURGE"))
    assert [n.node_id for n in t.nodes_after(None, NOW)] == ["n1", "n2", "n3", "n4"]
    # After n1, exclusive; a gone node keeps its place with its verdict, as in nodes().
    assert [(n.node_id, n.state) for n in t.nodes_after("n1", NOW)] == [
        ("n2", "offline"), ("n3", "online"), ("n4", "online"),
    ]  # fmt: skip
    assert list(t.nodes_after("n4", NOW)) == [] and len(list(t.nodes_after("a", NOW))) == 4
    # Built as read: a node forgotten while a reader pages is skipped, not an error.
    pages = t.nodes_after(None, NOW)
    assert next(pages).node_id == "n1"
    del t._known["n2"]
    assert [n.node_id for n in pages] == ["n3", "n4"]


async def test_the_api_and_the_alerts_read_the_same_verdict() -> None:
    t = tracker()
    await t.apply(entry("n1", record("n1")))
    await t.apply(entry("n1", op="PURGE"))
    (n1,) = t.nodes(NOW)
    job = JobSpec(job_id="j1", input="file:///a", operation=Probe())
    assert why_not(job, n1) == "n1 is offline"
    assert node_view(n1).state == "offline"


async def test_a_gone_node_is_forgotten_after_forget_after() -> None:
    t = tracker(forget_after=100.0)
    await t.apply(entry("stale", record("stale", ts=NOW - 1e6)))  # old, but its entry is there
    await t.apply(entry("gone", record("gone")))
    await t.apply(entry("gone", op="DEL"))
    later = time.time() + 101  # forget_after counts from when this instance saw it go
    assert t.sweep(later) == [("stale", "offline")]
    assert [n.node_id for n in t.nodes(later)] == ["stale"]
    assert t.stats.forgotten == 1


async def test_a_marker_for_an_unknown_node_and_bad_records_add_nothing() -> None:
    t = tracker()
    await t.apply(entry("ghost", op="PURGE"))
    await t.apply(entry("n1", b"{not json"))
    await t.apply(entry("n2", record("other")))  # a record under another node's key
    assert t.nodes(NOW) == [] and t.stats.bad_records == 2


async def test_sweep_reports_each_change_once() -> None:
    t = tracker()
    await t.apply(entry("n1", record("n1")))
    assert t.sweep(NOW) == [("n1", "online")]
    assert t.sweep(NOW + 10) == []
    assert t.sweep(NOW + 31) == [("n1", "offline")]
    await t.apply(entry("n1", record("n1", ts=NOW + 40, state="draining")))
    assert t.sweep(NOW + 41) == [("n1", "draining")]


async def test_wait_revision_returns_once_the_entry_is_applied() -> None:
    t = tracker()
    e = entry("n1", record("n1"))
    assert not await t.wait_revision(e.revision or 0, 0.01)
    await t.apply(e)
    assert await t.wait_revision(e.revision or 0, 0.01)


async def test_alerts_and_canaries_wait_for_the_first_read() -> None:
    t = tracker()  # never ran: the bucket has not been read
    with pytest.raises(RuntimeError, match="not been read"):
        await fleet_snapshot(cast(Any, None), Subjects("t"), [], t)
    none = cast(Any, None)
    runner = CanaryRunner(none, none, Subjects("t"), ["cpu"], t, timeout=60.0, interval=60.0)
    runner.failed.add("cpu")
    await runner.tick(NOW)  # an empty fleet would have cleared the failed pool
    assert runner.failed_pools() == ("cpu",) and not runner.pending


def _beating(node_id: str, interval: float) -> bytes:
    rec = NODE_RECORD_DECODER.decode(record(node_id))
    hb = msgspec.structs.replace(rec.heartbeat, interval_s=interval)
    return encode(msgspec.structs.replace(rec, heartbeat=hb))


async def test_a_node_that_beats_too_seldom_for_the_threshold_is_named_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t = tracker()  # offline after 30 s
    for _ in range(3):
        await t.apply(entry("slow", _beating("slow", 20.0)))  # 2 x 20 s > 30 s: it would flap
    await t.apply(entry("fine", _beating("fine", 10.0)))
    await t.apply(entry("old", record("old")))  # an older node says nothing: no verdict
    assert t.stats.slow_beats == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "node slow beats every 20s" in warning and "at most 15s" in warning
    await t.apply(entry("slow", _beating("slow", 25.0)))  # changed, still too slow: said again
    await t.apply(entry("slow", _beating("slow", 10.0)))  # fixed
    assert t.stats.slow_beats == 2
