"""The dev stack's 3-server NATS cluster: an R3 stream survives a SIGKILL of its leader, a new
leader is elected, nothing acknowledged is lost, and the killed server rejoins and catches up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import nats
from nats.js.api import StreamConfig

from control.devstack.natscluster import NatsCluster

LIMIT_S = 120.0


async def _cluster_info(url: str, stream: str) -> tuple[str | None, bool]:
    """(leader, every replica current and online) of `stream`; (None, False) while unanswered."""
    try:
        nc = await nats.connect(servers=url.split(","), allow_reconnect=False, connect_timeout=2)
    except Exception:
        return None, False
    try:
        info = await nc.jetstream(timeout=5).stream_info(stream)
    except Exception:
        return None, False
    finally:
        await nc.close()
    cl = info.cluster
    if cl is None or not cl.leader:
        return None, False
    peers = cl.replicas or []
    return cl.leader, len(peers) == 2 and all(p.current and not p.offline for p in peers)


async def _until(url: str, stream: str, ok: str | None) -> str:
    deadline = time.monotonic() + LIMIT_S
    while time.monotonic() < deadline:
        leader, current = await _cluster_info(url, stream)
        if leader is not None and (ok is None or (ok == "current" and current)):
            return leader
        await asyncio.sleep(0.5)
    raise AssertionError(f"{stream} has no leader (current={ok}) after {LIMIT_S}s")


async def test_r3_stream_survives_a_leader_kill(tmp_path: Path) -> None:
    cluster = NatsCluster(tmp_path / "nats", 3)
    await cluster.start(within=LIMIT_S)
    try:
        nc = await nats.connect(servers=cluster.url.split(","), max_reconnect_attempts=-1)
        try:
            js = nc.jetstream(timeout=10)
            for _ in range(int(LIMIT_S)):  # the meta leader may still be being elected
                try:
                    await js.add_stream(StreamConfig(name="T", subjects=["t.>"], num_replicas=3))
                    break
                except Exception:
                    await asyncio.sleep(1.0)
            for i in range(10):
                await js.publish(f"t.{i}", b"x")
            leader = await _until(cluster.url, "T", "current")

            await cluster.server(leader).kill()
            others = ",".join(s.url for s in cluster.servers if s.name != leader)
            deadline = time.monotonic() + LIMIT_S
            new = leader
            while new == leader and time.monotonic() < deadline:
                new = await _until(others, "T", None)
                await asyncio.sleep(0.5)
            assert new != leader
            for i in range(10, 20):  # writes go on with one server down
                await js.publish(f"t.{i}", b"x")

            await cluster.server(leader).start()
            await _until(cluster.url, "T", "current")
            assert (await js.stream_info("T")).state.messages == 20
        finally:
            await nc.close()
    finally:
        await cluster.stop()
