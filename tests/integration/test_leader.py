"""Leader lease on real JetStream KV: one leader at a time, takeover after a clean stop or a death,
and two real ControlPlane instances where only the leader runs the singletons."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control.config import AlertThresholds, ControlConfig
from control.leader import LeaderLease, LeaseError
from control.service import ControlPlane
from schemas.subjects import Subjects
from tests.support.controlplane import control_config
from tests.support.noderecords import node_record, put_node

TTL = 2.0
STEP = 0.05
#: Upper bound on any wait here (polls of STEP); generous for a loaded 2-core machine.
ROUNDS = int(30 / STEP)


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(ROUNDS):
        if cond():
            return
        await asyncio.sleep(STEP)
    pytest.fail("condition not reached in time")


class Candidate:
    """A lease campaigning on its own connection, recording its terms."""

    def __init__(self, nc: NATS, bucket: str, name: str) -> None:
        self.nc, self.stop = nc, asyncio.Event()
        self.lease = LeaderLease(nc.jetstream(), bucket, name, TTL)
        self.changes: list[bool] = []
        self.task = asyncio.create_task(self.lease.run(self.stop, self.record))

    async def record(self, leading: bool) -> None:
        self.changes.append(leading)

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 10)
        await self.nc.close()


@pytest.fixture
async def candidates(
    nats_url: str, prefix: str
) -> AsyncIterator[Callable[[str], Awaitable[Candidate]]]:
    made: list[Candidate] = []

    async def make(name: str) -> Candidate:
        nc = await nats.connect(nats_url, connect_timeout=5)
        made.append(Candidate(nc, f"{prefix}_leader", name))
        return made[-1]

    yield make
    for c in made:
        await c.close()


def leaders(*cs: Candidate) -> list[Candidate]:
    return [c for c in cs if c.lease.is_leader]


async def test_one_leader_and_takeover_after_a_clean_stop(
    candidates: Callable[[str], Awaitable[Candidate]],
) -> None:
    a, b = await candidates("a"), await candidates("b")
    await until(lambda: len(leaders(a, b)) == 1)
    first = leaders(a, b)[0]
    other = b if first is a else a
    # Several renewals later, still one leader and the same one.
    await asyncio.sleep(TTL)
    assert leaders(a, b) == [first] and other.changes == []
    await first.close()
    assert first.changes == [True, False]
    await until(lambda: other.lease.is_leader)
    assert other.changes == [True]


async def test_a_dead_leader_is_replaced_after_its_lease_expires(
    candidates: Callable[[str], Awaitable[Candidate]],
) -> None:
    a, b = await candidates("a"), await candidates("b")
    await until(lambda: len(leaders(a, b)) == 1)
    dead = leaders(a, b)[0]
    survivor = b if dead is a else a
    # The leader loses its broker (a crash or a partition): it cannot renew nor delete the key.
    await dead.nc.close()
    await until(lambda: survivor.lease.is_leader)
    # The dead one stepped down on its own once its lease could have expired.
    await until(lambda: not dead.lease.is_leader)
    assert survivor.changes == [True]


def config(nats_url: str, prefix: str, database_url: str, name: str) -> ControlConfig:
    return control_config(
        nats_url, prefix, database_url, alert_interval=0.2, canary_interval=0.2,
        alerts=AlertThresholds(hysteresis=1, node_offline_after=5.0), leader_lease_ttl=TTL,
        instance_id=name,
    )  # fmt: skip


def runs_singletons(plane: ControlPlane) -> bool:
    s = plane.singletons
    assert s is not None
    tasks = {"canary", "retention", "media-sweep", "stray-sweep", "workflows", "deadline-release"}
    return s.engine.active and set(s.term.tasks) == tasks


def idle(plane: ControlPlane) -> bool:
    s = plane.singletons
    assert s is not None
    return not s.engine.active and not s.term.tasks


def leading(plane: ControlPlane) -> float | None:
    return plane.metrics.registry.get_sample_value("flotilla_control_leader")


def fleet_series(plane: ControlPlane) -> set[str]:
    """The fleet-wide series this instance exports."""
    fleet = {"flotilla_nodes", "flotilla_fleet_nodes", "flotilla_fleet_jobs",
             "flotilla_queue_depth", "flotilla_queue_oldest_wait_seconds",
             "flotilla_alerts_firing"}  # fmt: skip
    families = plane.metrics.registry.collect()
    return {s.name for fam in families for s in fam.samples if s.name in fleet}


async def ticked(plane: ControlPlane) -> None:
    """Wait for the instance's next snapshot to reach its metrics."""
    before = plane.metrics.updated_at
    await until(lambda: plane.metrics.updated_at != before)


@pytest.mark.timeout(120)
async def test_two_control_planes_share_one_leader(
    nc: NATS, nats_url: str, prefix: str, database_url: str
) -> None:
    planes = [ControlPlane(config(nats_url, prefix, database_url, n)) for n in ("p1", "p2")]
    fired: list[dict[str, object]] = []

    async def on_alert(msg: Msg) -> None:
        fired.append(msgspec.json.decode(msg.data))

    sub = await nc.subscribe(f"{prefix}.alerts.>", cb=on_alert)
    try:
        for plane in planes:
            await plane.start()
        await until(lambda: sum(runs_singletons(p) for p in planes) == 1)
        leader = next(p for p in planes if runs_singletons(p))
        follower = next(p for p in planes if p is not leader)
        assert idle(follower)
        # Which instance leads is visible in each one's metrics.
        assert (leading(leader), leading(follower)) == (1.0, 0.0)
        # Fleet-wide gauges come from the leader alone, so a sum over instances counts once.
        await until(lambda: "flotilla_queue_depth" in fleet_series(leader))
        await ticked(follower)
        assert fleet_series(follower) == set()

        # An offline node: both instances see it, only one fires.
        await put_node(nc.jetstream(), Subjects(prefix), node_record("gone", ts=time.time() - 60))
        await until(lambda: any(a["subject"] == "gone" for a in fired))
        await asyncio.sleep(1.0)  # several more evaluation rounds on both instances
        assert [a["state"] for a in fired if a["subject"] == "gone"] == ["firing"]

        # The leader dies without a clean stop (its broker connection is gone).
        assert leader.nc is not None
        await leader.nc.close()
        await until(lambda: runs_singletons(follower))
        await until(lambda: idle(leader))
        assert leading(follower) == 1.0
        # The deposed leader stopped exporting them (its snapshots fail without NATS, so it
        # dropped them when its term ended); the new leader exports them.
        assert fleet_series(leader) == set()
        await until(lambda: "flotilla_queue_depth" in fleet_series(follower))
        assert "flotilla_nodes" in fleet_series(follower)
        # The new leader adopted the firing alert instead of firing it again...
        await asyncio.sleep(1.0)
        assert [a["state"] for a in fired if a["subject"] == "gone"] == ["firing"]
        # ...so it resolves it when the node is back.
        await put_node(nc.jetstream(), Subjects(prefix), node_record("gone"))
        await until(lambda: len([a for a in fired if a["subject"] == "gone"]) == 2)
        assert [a["state"] for a in fired if a["subject"] == "gone"] == ["firing", "resolved"]
    finally:
        await sub.unsubscribe()
        for plane in planes:
            await plane.stop()


async def test_the_bucket_ttl_is_what_counts(nc: NATS, prefix: str) -> None:
    js = nc.jetstream()
    await js.create_key_value(bucket=f"{prefix}_leader", history=1, ttl=3.0)
    lease = LeaderLease(js, f"{prefix}_leader", "a", TTL)
    await lease.open()
    assert (lease.ttl, lease.interval) == (3.0, 1.0)
    # Without a TTL a dead leader would hold the key forever: refused.
    await js.create_key_value(bucket=f"{prefix}_forever", history=1)
    with pytest.raises(LeaseError, match="no TTL"):
        await LeaderLease(js, f"{prefix}_forever", "a", TTL).open()
    for bucket in ("leader", "forever"):
        await js.delete_key_value(f"{prefix}_{bucket}")
