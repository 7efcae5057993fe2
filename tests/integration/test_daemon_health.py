"""A daemon's HTTP endpoints over real HTTP: metrics, liveness, and readiness that says why not."""

from __future__ import annotations

from pathlib import Path

from nats.aio.client import Client as NATS

from common.version import VERSION
from control.devstack.proc import free_ports
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from schemas.subjects import Subjects
from tests.support.daemons import config, until
from tests.support.scrape import http_get

#: The process collector exports process_* where the platform has /proc (Linux).
HAS_PROC = Path("/proc/self/stat").exists()


async def test_health_readiness_and_metrics(
    nc: NATS, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    await ensure_topology(nc.jetstream(), Subjects(prefix), TopologySettings(pools=["cpu"]))
    [port] = free_ports(1)
    d = Daemon(config(nats_url, prefix, tmp_path / "n1", "n1", metrics_port=port))
    await d.start()
    try:
        assert await http_get(port, "/healthz") == (200, "ok\n")
        assert await http_get(port, "/readyz") == (200, "ready\n")
        status, body = await http_get(port, "/metrics")
        assert status == 200 and "flotilla_jobs_running" in body
        assert f'flotilla_build_info{{component="daemon",version="{VERSION}"}} 1.0' in body
        assert ("process_cpu_seconds_total" in body) == HAS_PROC
        assert (await http_get(port, "/anything-else"))[0] == 404  # not the metrics page
        d.request_drain(None, "maintenance")

        async def says_draining() -> bool:
            return await http_get(port, "/readyz") == (503, "not ready: draining\n")

        await until(says_draining, 60)
        assert (await http_get(port, "/healthz"))[0] == 200  # alive, just not taking work
    finally:
        await d.stop(force=True)
