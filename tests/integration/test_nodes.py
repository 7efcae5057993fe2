"""The node tracker on a real node bucket: what the API, the alerts and the canaries read.

Offline tests use heartbeats that are old when put, or the bucket's own expiry, never a wait
for a heartbeat to age.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType

from control.alerts.rules import AlertEngine
from control.alerts.snapshot import fleet_snapshot
from control.api.service import ApiService, ApiSettings
from control.config import AlertThresholds
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas.alerts import Alert
from schemas.codec import encode
from schemas.subjects import Subjects
from tests.support.api import job
from tests.support.ingest import wait_until
from tests.support.noderecords import node_record, put_node, tracking


async def test_the_tracker_follows_the_bucket(nc: NATS, prefix: str) -> None:
    js, subjects = nc.jetstream(), Subjects(prefix)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    kv = await js.key_value(subjects.nodes_bucket)
    for name in ("n1", "ghost"):
        await put_node(js, subjects, node_record(name))
    async with tracking(js, subjects, offline_after=60.0) as fleet:
        assert states(fleet) == {"ghost": "online", "n1": "online"}
        (n1,) = [n for n in fleet.nodes() if n.node_id == "n1"]
        assert n1.capabilities.pools == ["cpu"] and n1.capabilities.verified_encoders

        # Gone without a marker (the stream purged under the watcher, as a re-created bucket
        # is): the next resync's listing finds no entry. Its last beat (50 s old) still
        # counts until offline_after (60 s), as a silent node's does: a live node writes again
        # within its interval, so the fleet does not read offline (and refuse submits) at once.
        bucket = subjects.nodes_bucket
        beat = time.time() - 50
        await put_node(js, subjects, node_record("ghost", ts=beat), seen_by=fleet)
        await js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.ghost")
        resyncs = fleet.stats.resyncs
        fleet.resync()
        await wait_until(lambda: _true(fleet.stats.resyncs > resyncs), "a resync")
        assert fleet.stats.unlisted == 1 and states(fleet)["ghost"] == "online"
        later = {n.node_id: n.state for n in fleet.nodes(now=beat + 61)}
        assert later["ghost"] == "offline"  # then offline, and still listed
        # A marker after all (a clean exit seen later) makes it offline at once.
        await kv.delete("ghost")
        await wait_until(lambda: _true(states(fleet)["ghost"] == "offline"), "ghost deleted")

        await put_node(js, subjects, node_record("n1", state="draining"), seen_by=fleet)
        assert states(fleet)["n1"] == "draining"
        await kv.delete("n1")  # a clean exit: offline, and remembered
        await wait_until(lambda: _true(states(fleet)["n1"] == "offline"), "n1 offline")
        await put_node(js, subjects, node_record("n1"), seen_by=fleet)
        assert states(fleet)["n1"] == "online"
        # Its heartbeats stop: the last one ages past offline_after with no marker at all.
        await put_node(js, subjects, node_record("n1", ts=time.time() - 61), seen_by=fleet)
        assert states(fleet)["n1"] == "offline"
        assert fleet.stats.bad_records == 0


async def test_an_expired_node_is_offline_for_the_api_and_the_alerts(nc: NATS, prefix: str) -> None:
    js, subjects = nc.jetstream(), Subjects(prefix)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    kv = await js.key_value(subjects.nodes_bucket)
    engine = AlertEngine(AlertThresholds(hysteresis=2), _ignore)
    # Heartbeats count as fresh for a minute, so only the entry's expiry can make n1 offline
    # (as with the defaults, where both take 30 s and the entry used to vanish first).
    async with tracking(js, subjects, offline_after=60.0) as fleet:
        api = ApiService(nc, subjects, ApiSettings(pools=["cpu"]), fleet)
        await api.start()
        try:

            async def seen() -> tuple[str, str, list[str]]:
                """n1's state as node.list and the alert snapshot give it, and new alerts."""
                listed = await call(nc, prefix, "node.list", {})
                snap = await fleet_snapshot(js, subjects, ["cpu"], fleet)
                (view,) = [n for n in snap.nodes if n.node_id == "n1"]
                alerts = [f"{a.rule} {a.state}" for a in await engine.evaluate(snap)]
                return listed["nodes"][0]["state"], view.state, alerts

            # The server expires this entry after 1 s and leaves a marker, as the bucket's TTL
            # does for a node that stops beating.
            revision = await kv.create("n1", encode(node_record("n1")), msg_ttl=1.0)
            assert await fleet.wait_revision(revision, 10.0)
            await wait_until(lambda: _true(states(fleet) == {"n1": "offline"}), "the expiry")
            assert fleet.stats.expiries == 1
            # It stays offline past the expiry: the second evaluation fires the alert.
            assert await seen() == ("offline", "offline", [])
            assert await seen() == (
                "offline",
                "offline",
                ["node_offline firing", "pool_offline firing"],
            )
            reply = await call(nc, prefix, "job.submit", {"v": 1, "job": job("j1")})
            assert "n1 is offline" in reply["message"]

            await put_node(js, subjects, node_record("n1"), seen_by=fleet)  # it comes back
            assert await seen() == ("online", "online", [])
            assert await seen() == (
                "online",
                "online",
                ["node_offline resolved", "pool_offline resolved"],
            )
            reply = await call(nc, prefix, "job.submit", {"v": 1, "job": job("j2")})
            assert reply["job_id"] == "j2"
        finally:
            await api.stop()


async def test_a_renewed_bucket_keeps_the_fleet_online_and_followed(nc: NATS, prefix: str) -> None:
    """`flotilla nats init --renew-node-bucket` deletes and re-creates the bucket under running
    trackers: the nodes never read offline (their beats are fresh) and their next puts are
    seen."""
    js, subjects = nc.jetstream(), Subjects(prefix)
    # As earlier versions made it (every put fsynced), so that renewing re-creates it.
    cfg = KeyValueConfig(bucket=subjects.nodes_bucket, history=1, ttl=30.0, limit_marker_ttl=1.0)
    await js.create_key_value(cfg, storage=StorageType.FILE)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    await put_node(js, subjects, node_record("n1"))
    seen: set[str] = set()

    async def watch_states() -> None:
        while True:
            seen.update(states(fleet).values())
            await asyncio.sleep(0.01)

    # No periodic resync: only a watcher that follows the new bucket sees the next put.
    async with tracking(js, subjects, offline_after=60.0, resync_interval=3600.0) as fleet:
        watching = asyncio.create_task(watch_states())
        try:
            resyncs = fleet.stats.resyncs
            renewed = await ensure_topology(
                js, subjects, TopologySettings(pools=["cpu"]), renew_node_bucket=True
            )
            assert any("re-created" in line for line in renewed.updated)
            # The tracker finds the new bucket empty: n1 has no entry, its beat is fresh.
            await wait_until(lambda: _true(fleet.stats.resyncs > resyncs), "the new bucket read")
            assert fleet.stats.unlisted == 1
            await put_node(js, subjects, node_record("n1", state="draining"))
            await wait_until(lambda: _true("draining" in seen), "the put into the new bucket")
        finally:
            watching.cancel()
        assert seen == {"online", "draining"}


async def test_a_stopped_daemon_stays_listed_having_said_it_stopped(
    js: JetStreamContext, prefix: str, start_daemon: Any
) -> None:
    async with tracking(js, Subjects(prefix)) as fleet:
        daemon = await start_daemon()
        await wait_until(lambda: _true(states(fleet) == {"n1": "online"}), "n1 online")
        await daemon.stop()
        await wait_until(lambda: _true(fleet.stats.expiries == 1), "its entry deleted")
        (n1,) = fleet.nodes()
        # Offline, and its last heartbeat says so: `drain --wait` reads that as a clean stop.
        assert (n1.state, n1.heartbeat.state, n1.heartbeat.running_jobs) == (
            "offline",
            "offline",
            [],
        )


def states(fleet: NodeTracker) -> dict[str, str]:
    return {n.node_id: n.state for n in fleet.nodes()}


async def call(nc: NATS, prefix: str, verb: str, body: Any) -> dict[str, Any]:
    msg = await nc.request(f"{prefix}.api.{verb}", msgspec.json.encode(body), timeout=5)
    reply: dict[str, Any] = msgspec.json.decode(msg.data)
    return reply


async def _ignore(alert: Alert) -> None:
    pass


async def _true(value: bool) -> bool:
    return value
