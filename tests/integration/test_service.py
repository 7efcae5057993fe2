"""The whole control plane in-process against real NATS and Postgres: API, metrics, alerts."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from control.config import AlertThresholds, ControlConfig
from control.devstack.stack import ExternalPostgres, PostgresServer
from control.service import ControlPlane
from schemas.subjects import Subjects
from tests.support.api import job
from tests.support.controlplane import control_config
from tests.support.ingest import wait_until
from tests.support.noderecords import node_record, put_node
from tests.support.scrape import http_get


def _config(nats_url: str, prefix: str, database_url: str, **over: Any) -> ControlConfig:
    """A fast watcher: states change within the test."""
    return control_config(nats_url, prefix, database_url, alert_interval=0.2, **over)


async def test_control_plane_end_to_end(
    nc: NATS, nats_url: str, prefix: str, database_url: str
) -> None:
    alerts = AlertThresholds(hysteresis=1, node_offline_after=5.0)
    cfg = _config(nats_url, prefix, database_url, canary_interval=0.2, alerts=alerts)
    plane = ControlPlane(cfg)
    await plane.start()
    try:
        js = nc.jetstream()
        subjects = Subjects(prefix)
        await put_node(js, subjects, node_record("n1"), seen_by=plane.nodes)
        msg = await nc.request(
            f"{prefix}.api.job.submit", msgspec.json.encode({"v": 1, "job": job("s1")}), timeout=5
        )
        assert msgspec.json.decode(msg.data)["job_id"] == "s1"
        msg = await nc.request(f"{prefix}.api.job.get", b'{"v":1,"job_id":"s1"}', timeout=5)
        assert msgspec.json.decode(msg.data)["state"] == "submitted"

        await put_node(js, subjects, node_record("n2", ts=time.time() - 60))
        db = await asyncpg.connect(database_url)
        try:
            rule = None
            for _ in range(100):  # bounded: the watcher ticks every 0.2 s
                rule = await db.fetchval(
                    "SELECT rule FROM alerts WHERE subject = 'n2' AND state = 'firing'"
                )
                if rule:
                    break
                await asyncio.sleep(0.1)
            assert rule == "node_offline"
        finally:
            await db.close()
        # The alert is stored during an evaluation; the gauges follow when that tick ends.
        want = (
            'flotilla_fleet_jobs{pool="cpu",state="submitted"} 1.0',
            'flotilla_alerts_firing{rule="node_offline",severity="warning"} 1.0',
            # The two requests above, timed by verb; the loop watcher's samples.
            'flotilla_api_request_seconds_count{verb="job.submit"} 1.0',
            'flotilla_api_request_seconds_count{verb="job.get"} 1.0',
            "flotilla_control_loop_lag_seconds_count ",
        )
        gc.collect()  # a pass the collector timer sees (the loop watcher has started)

        async def scraped() -> bool:
            status, body = await http_get(plane.metrics_port, "/metrics")
            passes = 'flotilla_control_gc_pause_seconds_count{generation="2"}'
            return status == 200 and all(line in body for line in want) and passes in body

        await wait_until(scraped, "the gauges of the snapshot that fired the alert")
        assert (await http_get(plane.metrics_port, "/readyz"))[0] == 200
        msg = await nc.request(f"{prefix}.api.fleet.summary", b"{}", timeout=5)
        firing = msgspec.json.decode(msg.data)["alerts_firing"]
        assert ("node_offline", "n2") in [(a["rule"], a["subject"]) for a in firing]
    finally:
        await plane.stop()
    assert plane.tasks == {}


async def test_readiness_follows_a_postgres_outage(
    nats_url: str,
    prefix: str,
    database_url: str,
    pg_server: PostgresServer | ExternalPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert isinstance(pg_server, PostgresServer), "this test restarts the embedded Postgres"
    plane = ControlPlane(_config(nats_url, prefix, database_url))
    await plane.start()

    async def readyz(want: int) -> bool:
        return (await http_get(plane.metrics_port, "/readyz"))[0] == want

    try:
        await wait_until(lambda: readyz(200), "ready")
        try:
            await pg_server.stop()
            await wait_until(lambda: readyz(503), "not ready while Postgres is down")
            status, body = await http_get(plane.metrics_port, "/readyz")
            assert status == 503 and "postgres unreachable" in body, body
        finally:
            await pg_server.start()
        await wait_until(lambda: readyz(200), "ready again once Postgres is back")
    finally:
        await plane.stop()
    # An outage is expected weather: lines that say so, never a traceback per loop.
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("flotilla")]
    assert tracebacks == [], [(r.name, r.getMessage()) for r in tracebacks]
