"""Alert rules as tables (fires / must not fire), hysteresis, and real fleet alerts over NATS."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control.alerts import rules as A
from control.alerts.rules import AlertEngine, NodeView, PoolView, Snapshot, nats_sink
from control.alerts.snapshot import fleet_snapshot
from control.config import AlertThresholds
from control.topology import TopologySettings, ensure_topology
from schemas.alerts import Alert
from schemas.codec import encode
from schemas.jobs import JobSpec
from schemas.operations import Canary
from schemas.registry import ALERT_DECODER
from schemas.subjects import Subjects
from tests.support.noderecords import node_record, put_node, tracking

T = AlertThresholds(
    queue_depth=10, oldest_wait_seconds=60, failure_rate=0.5, failure_rate_min_jobs=4
)
ON = NodeView("n1", "online", ("cpu",))
OFF = NodeView("n2", "offline", ("cpu",))

# rule, snapshot that must fire (with the expected subject), snapshot that must not fire
TABLE = [
    (A.node_offline, Snapshot(nodes=(OFF,)), "n2", Snapshot(nodes=(ON,))),
    (
        A.pool_offline_with_work,
        Snapshot(nodes=(OFF,), pools=(PoolView("cpu", 3),)),
        "cpu",
        Snapshot(nodes=(ON, OFF), pools=(PoolView("cpu", 3),)),
    ),
    (
        A.pool_offline_with_work,
        Snapshot(pools=(PoolView("gpu", 1),)),
        "gpu",
        Snapshot(pools=(PoolView("gpu", 0),)),
    ),
    # Every pool the topology names, queue or no queue; a draining node does not count.
    (
        A.pool_offline,
        Snapshot(nodes=(OFF, NodeView("n3", "draining", ("cpu",))), pools=(PoolView("cpu", 0),)),
        "cpu",
        Snapshot(nodes=(ON, OFF), pools=(PoolView("cpu", 0),)),
    ),
    (
        A.queue_depth,
        Snapshot(pools=(PoolView("cpu", 11),)),
        "cpu",
        Snapshot(pools=(PoolView("cpu", 10),)),
    ),
    (
        A.oldest_wait,
        Snapshot(pools=(PoolView("cpu", 1, 61.0),)),
        "cpu",
        Snapshot(pools=(PoolView("cpu", 1, 60.0), PoolView("x", 0, None))),
    ),
    (
        A.failure_rate,
        Snapshot(finished_in_window=4, failed_in_window=3),
        "fleet",
        Snapshot(finished_in_window=3, failed_in_window=3),  # too few jobs to judge
    ),
    (
        A.failure_rate,
        Snapshot(finished_in_window=10, failed_in_window=6),
        "fleet",
        Snapshot(finished_in_window=10, failed_in_window=5),
    ),
    (
        A.node_disk,
        Snapshot(nodes=(NodeView("n1", "online", disk_percent=95),)),
        "n1",
        Snapshot(
            nodes=(
                NodeView("n1", "offline", disk_percent=95),
                NodeView("n3", "online", disk_percent=90),
            )
        ),
    ),
    (
        A.node_memory,
        Snapshot(nodes=(NodeView("n1", "draining", memory_percent=96),)),
        "n1",
        Snapshot(nodes=(NodeView("n1", "online", memory_percent=95),)),
    ),
    (
        A.gpu_temperature,
        Snapshot(nodes=(NodeView("n1", "online", gpu_temps_c=(60.0, 90.0)),)),
        "n1",
        Snapshot(nodes=(NodeView("n1", "online", gpu_temps_c=(85.0,)),)),
    ),
    (
        A.stuck_job,
        Snapshot(running_idle_s={"j1": 901.0}),
        "j1",
        Snapshot(running_idle_s={"j1": 900.0}),
    ),
    (A.ingest_lag, Snapshot(ingest_lag_s=61.0), "fleet", Snapshot(ingest_lag_s=60.0)),
    (A.canary_failed, Snapshot(canary_failed=("cpu",)), "cpu", Snapshot()),
    (
        A.rejected_events,
        Snapshot(rejected_by_node={"n9": 2, "n1": 0}),
        "n9",
        Snapshot(rejected_by_node={"n1": 0}),
    ),
    (
        A.deadline_at_risk,
        Snapshot(deadlines_at_risk={"acme/j1": 30.0}),
        "acme/j1",
        Snapshot(),
    ),
]


@pytest.mark.parametrize(("rule", "fires", "subject", "quiet"), TABLE)
def test_rule_table(rule: A.Rule, fires: Snapshot, subject: str, quiet: Snapshot) -> None:
    assert [f[0] for f in rule(fires, T)] == [subject]
    assert rule(quiet, T) == []


def test_required_pools_replace_the_topology_pools() -> None:
    snap = Snapshot(nodes=(ON,), pools=(PoolView("cpu"), PoolView("nvenc")))
    assert [f[0] for f in A.pool_offline(snap, T)] == ["nvenc"]
    only_cpu = AlertThresholds(required_pools=["cpu"])
    assert A.pool_offline(snap, only_cpu) == []
    # A required pool the topology does not list is still watched.
    assert [f[0] for f in A.pool_offline(snap, AlertThresholds(required_pools=["qsv"]))] == ["qsv"]
    assert (
        A.pool_offline(Snapshot(pools=(PoolView("cpu"),)), AlertThresholds(required_pools=[])) == []
    )


def test_every_rule_is_in_the_table() -> None:
    assert {fn for fn, _ in A.RULES.values()} == {row[0] for row in TABLE}


async def test_hysteresis_fires_and_resolves() -> None:
    seen: list[Alert] = []

    async def sink(a: Alert) -> None:
        seen.append(a)

    engine = AlertEngine(AlertThresholds(hysteresis=2), sink)
    down, up = Snapshot(nodes=(OFF,)), Snapshot()
    assert await engine.evaluate(down) == []  # one sample is not enough
    assert await engine.evaluate(up) == []  # and the counter restarts
    assert await engine.evaluate(down) == []
    fired = await engine.evaluate(down)
    assert [(a.rule, a.state, a.subject) for a in fired] == [("node_offline", "firing", "n2")]
    assert await engine.evaluate(down) == []  # no repeats while firing
    assert await engine.evaluate(up) == []
    resolved = await engine.evaluate(up)
    assert [(a.state, a.alert_id) for a in resolved] == [("resolved", fired[0].alert_id)]
    assert engine.firing() == [] and len(seen) == 2


async def test_node_offline_and_backlog_over_nats(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    got: list[Alert] = []

    async def on_alert(msg: Msg) -> None:
        got.append(ALERT_DECODER.decode(msg.data))

    sub = await nc.subscribe(f"{prefix}.alerts.>", cb=on_alert)
    engine = AlertEngine(AlertThresholds(hysteresis=1, queue_depth=2), nats_sink(nc, subjects))
    async with tracking(js, subjects, offline_after=5.0) as fleet:

        async def tick() -> list[Alert]:
            snap = await fleet_snapshot(js, subjects, ["cpu"], fleet)
            return await engine.evaluate(snap)

        # The node's last heartbeat is older than offline_after: it stopped beating.
        await put_node(js, subjects, node_record("n1", ts=time.time() - 60), seen_by=fleet)
        assert [(a.rule, a.subject) for a in await tick()] == [
            ("node_offline", "n1"),
            ("pool_offline", "cpu"),  # its only node: the pool has none online
        ]
        await put_node(js, subjects, node_record("n1"), seen_by=fleet)  # it comes back
        assert [(a.rule, a.state) for a in await tick()] == [
            ("node_offline", "resolved"),
            ("pool_offline", "resolved"),
        ]

        for i in range(3):
            job = JobSpec(job_id=f"b{i}", input="file:///x", operation=Canary())
            await js.publish(subjects.submit(job.tenant, "cpu", "normal", job.job_id), encode(job))
        assert [(a.rule, a.subject, a.value) for a in await tick()] == [("queue_depth", "cpu", 3.0)]
        snap = await fleet_snapshot(js, subjects, ["cpu"], fleet)
        wait = snap.pools[0].oldest_wait_s
        assert wait is not None and 0.0 <= wait < 3600.0  # the first job's age, from the stream
        await js.purge_stream(subjects.jobs_stream)
        assert [(a.rule, a.state) for a in await tick()] == [("queue_depth", "resolved")]
        await nc.flush()
        for _ in range(50):  # bounded wait for the six published alerts to arrive
            if len(got) >= 6:
                break
            await asyncio.sleep(0.05)
        await sub.unsubscribe()
        assert [(a.rule, a.state) for a in got] == [
            ("node_offline", "firing"),
            ("pool_offline", "firing"),
            ("node_offline", "resolved"),
            ("pool_offline", "resolved"),
            ("queue_depth", "firing"),
            ("queue_depth", "resolved"),
        ]
