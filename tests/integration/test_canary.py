"""Canaries on real NATS and Postgres: one per live pool, latency when done, alert when late."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import asyncpg
import msgspec
from nats.aio.client import Client as NATS

from control.alerts.canary import CanaryRunner
from control.alerts.rules import canary_failed
from control.alerts.snapshot import fleet_snapshot
from control.config import AlertThresholds
from control.db.store import record_submission
from control.topology import TopologySettings, ensure_topology
from schemas.nodes import NodeRecord
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects
from tests.support.noderecords import node_record, put_node, tracking


async def test_canary_latency_and_timeout(nc: NATS, prefix: str, db: asyncpg.Pool) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu", "nvenc"]))
    async with tracking(js, subjects) as fleet:
        await put_node(js, subjects, node_record("n1"), seen_by=fleet)
        runner = CanaryRunner(js, db, subjects, ["cpu", "nvenc"], fleet, timeout=10.0, interval=1.0)
        await runner.tick(now=1000.0)
        assert list(runner.pending) == ["cpu"]  # nvenc has no online node
        job_id = runner.pending["cpu"].job_id
        stored = await js.get_last_msg(
            subjects.jobs_stream, subjects.job_stored("canary", "cpu", "high", job_id)
        )
        spec = JOB_DECODER.decode(stored.data or b"")
        assert spec.operation_name == "canary" and spec.pool == "cpu"

        async with db.acquire() as conn:  # the daemon ran it and ingest folded its completion
            await record_submission(conn, spec, submitted_at=datetime.now(UTC))
        await db.execute("UPDATE jobs SET state = 'completed' WHERE job_id = $1", job_id)
        await runner.tick(now=1002.5)
        assert runner.latency == {"cpu": 2.5} and runner.failed_pools() == ()

        await runner.tick(now=1020.0)  # the next canary (sent at 1002.5) never completes
        assert runner.failed_pools() == ("cpu",)
        snap = await fleet_snapshot(js, subjects, ["cpu"], fleet, runner.failed_pools())
        assert [f[0] for f in canary_failed(snap, AlertThresholds())] == ["cpu"]


async def test_a_canary_behind_real_work_is_starved_not_failed(
    nc: NATS, prefix: str, db: asyncpg.Pool
) -> None:
    """Long jobs fill every slot: the canary waits its turn without an alert; once a slot is
    free and it still does not run, it has failed."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))

    def beat(free: int) -> NodeRecord:
        rec = node_record("n1")
        hb = msgspec.structs.replace(rec.heartbeat, slots={"cpu": 2}, free_slots={"cpu": free})
        return msgspec.structs.replace(rec, heartbeat=hb)

    async with tracking(js, subjects) as fleet:
        await put_node(js, subjects, beat(0), seen_by=fleet)
        # Times within the node's offline window (its heartbeat is real time): it stays online.
        runner = CanaryRunner(js, db, subjects, ["cpu"], fleet, timeout=5.0, interval=1.0)
        await runner.tick(now=time.time())
        sent = runner.pending["cpu"]
        await runner.tick(now=sent.sent_at + 10.0)  # past its timeout, never taken
        assert runner.failed_pools() == () and runner.pending["cpu"] is sent
        await put_node(js, subjects, beat(1), seen_by=fleet)  # room now, and still not taken
        await runner.tick(now=sent.sent_at + 11.0)
        assert runner.failed_pools() == ("cpu",)
