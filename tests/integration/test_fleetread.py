"""Reading the fleet from the node bucket while nodes write heartbeats: never a short list."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest_asyncio
from nats.aio.client import Client as NATS

from control.fleetread import ingest_backlog_age, node_keys, pool_queue
from control.ingest import Ingestor
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas.subjects import Subjects
from tests.support.ingest import lifecycle, migrated_pool, publish, running, setup, wait_until
from tests.support.noderecords import node_record, put_node, tracking

NAMES = ["n1", "n2", "n3"]


@pytest_asyncio.fixture
async def beating(nc: NATS, prefix: str) -> AsyncIterator[Subjects]:
    """Three nodes writing heartbeats as fast as they can, for the test's length (bounded)."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings())
    for name in NAMES:
        await put_node(js, subjects, node_record(name))
    stop = asyncio.Event()

    async def writer(name: str) -> None:
        for _ in range(20000):  # bounded; stopped early once the test is done
            if stop.is_set():
                return
            await put_node(js, subjects, node_record(name))

    writers = [asyncio.create_task(writer(n)) for n in NAMES]
    try:
        yield subjects
    finally:
        stop.set()
        await asyncio.gather(*writers)


async def test_concurrent_heartbeats_never_hide_a_key(nc: NATS, beating: Subjects) -> None:
    js = nc.jetstream()
    seen = [await node_keys(js, beating) for _ in range(150)]
    assert all(keys == NAMES for keys in seen)


async def test_resyncs_under_heartbeats_never_lose_a_node(nc: NATS, beating: Subjects) -> None:
    async with tracking(nc.jetstream(), beating) as fleet:
        for _ in range(30):
            resyncs = fleet.stats.resyncs
            fleet.resync()
            await wait_until(_more(lambda: fleet.stats.resyncs, resyncs), "a resync")
            assert [(n.node_id, n.state) for n in fleet.nodes()] == [(n, "online") for n in NAMES]
        assert fleet.stats.unlisted == 0 and fleet.stats.expiries == 0


async def test_a_deleted_node_stays_listed_offline(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings())
    for name in ("a", "b"):
        await put_node(js, subjects, node_record(name))
    kv = await js.key_value(subjects.nodes_bucket)
    await kv.delete("a")
    # A tracker started after the delete never knew the node; one that saw it go lists it.
    async with tracking(js, subjects) as late:
        assert [(n.node_id, n.state) for n in late.nodes()] == [("b", "online")]
    async with tracking(js, subjects) as watching:
        await put_node(js, subjects, node_record("a"), seen_by=watching)
        await kv.delete("a")
        await wait_until(_gone(watching, "a"), "the delete")
        assert [(n.node_id, n.state) for n in watching.nodes()] == [
            ("a", "offline"),
            ("b", "online"),
        ]


def _more(value: Callable[[], int], before: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return value() > before

    return check


def _gone(fleet: NodeTracker, node_id: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return any(n.node_id == node_id and n.state == "offline" for n in fleet.nodes())

    return check


async def test_ingest_lag_is_the_age_of_the_oldest_event_not_yet_ingested(
    nc: NATS, prefix: str, database_url: str
) -> None:
    """Not the last batch's lag, which stays put once ingest goes idle: the backlog as it is."""
    js, subjects = await setup(nc, prefix)
    assert await ingest_backlog_age(js, subjects) == 0.0  # nothing ever published
    await publish(js, subjects, lifecycle("lag-1", time.time()))
    first = await js.get_msg(subjects.events_stream, seq=1)
    assert first.time is not None
    later = first.time.timestamp() + 100.0
    assert await ingest_backlog_age(js, subjects, later) >= 100.0  # waits since it was stored

    async def caught_up() -> bool:
        return await ingest_backlog_age(js, subjects, later) == 0.0

    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(js, db, subjects, batch=10, fetch_timeout=0.2)
        async with running(ingestor):
            await wait_until(caught_up, "ingest to catch up")


async def test_the_queue_counts_held_deadline_jobs_and_their_wait(nc: NATS, prefix: str) -> None:
    """A deadline job waiting for the leader's release is in no lane, yet it waits: the pool's
    queue counts it, and a held job's age shows in the oldest wait (a stalled release alerts)."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu", "gpu"]))
    first = await js.publish(subjects.timed("acme", "cpu", "normal", "held-1"), b"{}")
    await js.publish(subjects.timed("rival", "cpu", "high", "held-2"), b"{}")
    await js.publish(subjects.timed("acme", "gpu", "high", "other-pool"), b"{}")
    await js.publish(subjects.submit("acme", "cpu", "low", "plain-1"), b"{}")  # the newest
    stored = (await js.get_msg(subjects.jobs_stream, first.seq)).time
    assert stored is not None
    queue = await pool_queue(js, subjects, "cpu", now=stored.timestamp() + 100.0)
    assert queue.queued == 3
    assert queue.oldest_wait_s is not None and queue.oldest_wait_s >= 100.0
