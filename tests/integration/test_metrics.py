"""Scrape /metrics, /healthz and /readyz over real HTTP, fed by a real NATS snapshot."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NATS

from common.version import VERSION
from control.alerts.rules import AlertEngine, NodeView, PoolView, Snapshot
from control.alerts.snapshot import fleet_snapshot
from control.alerts.watcher import Watcher
from control.config import AlertThresholds
from control.metrics import Metrics, Readiness
from control.topology import TopologySettings, ensure_topology
from schemas.alerts import Alert
from schemas.subjects import Subjects
from tests.support.noderecords import node_record, put_node, tracking
from tests.support.scrape import http_get

#: The process collector exports process_* where the platform has /proc (Linux).
HAS_PROC = Path("/proc/self/stat").exists()


async def test_scrape_health_and_ready(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    async with tracking(js, subjects) as fleet:
        await put_node(js, subjects, node_record("n1", gpu_temp=99.0), seen_by=fleet)
        fired: list[Alert] = []

        async def sink(a: Alert) -> None:
            fired.append(a)

        metrics = Metrics()
        engine = AlertEngine(AlertThresholds(hysteresis=1), sink)

        async def source() -> Snapshot:
            return await fleet_snapshot(js, subjects, ["cpu"], fleet)

        watcher = Watcher(source, engine, metrics, interval=0.1)
        ready = Readiness(metrics, lambda: nc.is_connected, 60.0, 60.0)
        ready.postgres_ok = True
        server = metrics.server("127.0.0.1", 0, ready=ready.problems)
        port = await server.start()
        try:
            assert await http_get(port, "/healthz") == (200, "ok\n")
            assert await http_get(port, "/readyz") == (503, "not ready: fleet snapshot stale\n")
            await watcher.tick()
            assert await http_get(port, "/readyz") == (200, "ready\n")
            status, body = await http_get(port, "/metrics")
            assert status == 200
            assert 'flotilla_nodes{pool="cpu",state="online"} 1.0' in body
            assert 'flotilla_fleet_nodes{state="online"} 1.0' in body
            assert f'flotilla_build_info{{component="control",version="{VERSION}"}} 1.0' in body
            assert ("process_cpu_seconds_total" in body) == HAS_PROC
            assert 'flotilla_queue_depth{pool="cpu"} 0.0' in body
            assert 'flotilla_alerts_firing{rule="gpu_temperature",severity="warning"} 1.0' in body
            assert (await http_get(port, "/nope"))[0] == 404
        finally:
            await server.stop()
        assert [a.rule for a in fired] == ["gpu_temperature"]


def test_update_drops_vanished_labels() -> None:
    m = Metrics()
    m.update(Snapshot(nodes=(NodeView("a", "online", ("cpu",)),)), [])
    m.update(Snapshot(nodes=(NodeView("a", "offline", ("cpu",)),)), [])
    samples = {(s.labels["state"], s.value) for fam in m.nodes.collect() for s in fam.samples}
    assert samples == {("offline", 1.0)}


FLEET = {
    "flotilla_nodes", "flotilla_fleet_nodes", "flotilla_fleet_jobs", "flotilla_queue_depth",
    "flotilla_queue_oldest_wait_seconds", "flotilla_alerts_firing",
}  # fmt: skip


def fleet_series(m: Metrics) -> set[str]:
    return {s.name for fam in m.registry.collect() for s in fam.samples if s.name in FLEET}


def test_fleet_gauges_are_the_leaders_alone() -> None:
    hot = Alert(alert_id="a", rule="gpu_temperature", severity="warning", state="firing",
                subject="n1", summary="hot", fired_at=0.0)  # fmt: skip
    snap = Snapshot(
        nodes=(NodeView("a", "online", ("cpu",)),), pools=(PoolView("cpu", 2, 5.0),),
        jobs={("queued", "cpu"): 2}, ingest_lag_s=3.0,
    )  # fmt: skip
    m = Metrics()
    m.lead(True)
    m.update(snap, [hot], leading=True)
    assert fleet_series(m) == FLEET
    # Deposed: the gauges go at once, before its next snapshot...
    m.lead(False)
    assert fleet_series(m) == set()
    assert m.registry.get_sample_value("flotilla_control_leader") == 0.0
    # ...and a follower's snapshots export none, though its own figures stay.
    m.update(snap, [hot], leading=False)
    assert fleet_series(m) == set() and m.updated_at is not None
    assert m.registry.get_sample_value("flotilla_ingest_lag_seconds") == 3.0


def test_readiness_names_each_dependency_and_recovers() -> None:
    m = Metrics()
    connected = [True]
    ready = Readiness(m, lambda: connected[0], snapshot_max_age=30.0, ingest_max_lag=60.0)
    assert ready.problems() == ["postgres unreachable", "fleet snapshot stale"]
    ready.postgres_ok = True
    m.update(Snapshot(), [])
    assert ready.problems() == []
    connected[0] = False
    assert ready.problems() == ["nats disconnected"]
    connected[0] = True
    ready.ingest_batch(lag_s=300.0)  # working through a backlog
    assert ready.problems() == ["ingest 300s behind"]
    assert m.updated_at is not None
    later = m.updated_at + 31.0  # no snapshot since, and the lag report is as old
    assert ready.problems(now=later) == ["fleet snapshot stale"]
    ready.ingest_batch(lag_s=1.0)
    m.update(Snapshot(), [])
    assert ready.problems() == []
