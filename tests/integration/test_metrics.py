"""Scrape /metrics, /healthz and /readyz over real HTTP, fed by a real NATS snapshot."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from control.alerts.rules import AlertEngine, NodeView, Snapshot
from control.alerts.snapshot import fleet_snapshot
from control.alerts.watcher import Watcher
from control.config import AlertThresholds
from control.metrics import Metrics
from control.topology import TopologySettings, ensure_topology
from schemas.alerts import Alert
from schemas.subjects import Subjects
from tests.support.noderecords import node_record, put_node, tracking
from tests.support.scrape import http_get


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
        server = metrics.server("127.0.0.1", 0, ready=lambda: nc.is_connected)
        port = await server.start()
        try:
            assert await http_get(port, "/healthz") == (200, "ok\n")
            assert (await http_get(port, "/readyz"))[0] == 503  # no snapshot yet
            await watcher.tick()
            assert await http_get(port, "/readyz") == (200, "ready\n")
            status, body = await http_get(port, "/metrics")
            assert status == 200
            assert 'flotilla_nodes{pool="cpu",state="online"} 1.0' in body
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
