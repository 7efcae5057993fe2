"""Fair-share pools against a real nats-server: one consumer per tenant, a node's starts follow
the weights, a tenant without a share is refused at publish, and a pool changes layout only
while it holds no job.

Each job "runs" until the test ends it, and the book's clock is moved one second per job, so
the order is decided by the weights, never by how fast the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError

from control.api.jobcancel import delete_queued
from control.fleetread import pool_queue
from control.topology import TopologyError, TopologySettings, ensure_topology
from daemon.pull.puller import PoolPuller
from daemon.pull.slots import HOLD, Hold, Slots
from schemas.subjects import Subjects, parse_stored

SHARES = {"cpu": {"studio": 3.0, "news": 1.0}}
TOPO = TopologySettings(ack_wait=30.0, pools=["cpu"], shares={"cpu": dict(SHARES["cpu"])})
NEVER_POLL = 3600.0
WITHIN = 120.0

Fetched = asyncio.Queue[tuple[Msg, Hold | None]]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def js(nc: NATS, prefix: str) -> JetStreamContext:
    ctx = nc.jetstream(timeout=5)
    await ensure_topology(ctx, Subjects(prefix), TOPO)
    return ctx


async def submit(js: JetStreamContext, prefix: str, tenant: str, job_id: str) -> None:
    subject = Subjects(prefix).submit(tenant, "cpu", "normal", job_id)
    await js.publish(subject, b"{}", headers={"Nats-Msg-Id": f"{tenant}.{job_id}"})


@contextlib.asynccontextmanager
async def node(node_nc: NATS, prefix: str, slots: Slots) -> AsyncIterator[tuple[Fetched, Clock]]:
    fetched: Fetched = asyncio.Queue()
    puller = PoolPuller(
        node_nc.jetstream(timeout=5), Subjects(prefix), "cpu", slots,
        lambda msg, _pool, _prio: fetched.put_nowait((msg, HOLD.get())),
        fetch_timeout=NEVER_POLL, wake_source=node_nc,
    )  # fmt: skip
    clock = Clock()
    puller.book.clock = clock
    task = asyncio.create_task(puller.run())
    try:
        yield fetched, clock
    finally:
        puller.stop()
        await asyncio.wait_for(task, WITHIN)


async def take(fetched: Fetched, clock: Clock, slots: Slots) -> str:
    """The next job started: it runs one (book) second, is acked and ends as a job's task does
    (its slot released with its hold in context). Returns its tenant."""
    msg, hold = await asyncio.wait_for(fetched.get(), WITHIN)
    clock.now += 1.0
    await msg.ack_sync(timeout=5)
    token = HOLD.set(hold)
    try:
        slots.release("cpu")
    finally:
        HOLD.reset(token)
    tenant = parse_stored(msg.subject).tenant
    assert tenant is not None
    return tenant


async def test_starts_follow_the_weights(js: JetStreamContext, node_nc: NATS, prefix: str) -> None:
    for i in range(12):
        await submit(js, prefix, "studio", f"s{i}")
    for i in range(4):
        await submit(js, prefix, "news", f"n{i}")
    slots = Slots({"cpu": 1})
    async with node(node_nc, prefix, slots) as (fetched, clock):
        order = [await take(fetched, clock, slots) for _ in range(16)]
    assert Counter(order) == {"studio": 12, "news": 4}
    # Interleaved by weight, not in submit order: news never waits behind more than 3 studio.
    runs = "".join("s" if t == "studio" else " " for t in order).split()
    assert max(len(r) for r in runs) <= 3, order


async def test_a_tenant_over_its_share_yields_to_one_under_it(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    for i in range(8):
        await submit(js, prefix, "studio", f"s{i}")
    slots = Slots({"cpu": 1})
    async with node(node_nc, prefix, slots) as (fetched, clock):
        first = [await take(fetched, clock, slots) for _ in range(3)]
        assert first == ["studio"] * 3  # alone, studio has the node
        # The fourth studio job is in hand already (one slot, taken as the third ended).
        msg, hold = await asyncio.wait_for(fetched.get(), WITHIN)
        await submit(js, prefix, "news", "n0")
        await submit(js, prefix, "news", "n1")
        fetched.put_nowait((msg, hold))
        order = [await take(fetched, clock, slots) for _ in range(7)]
    # Studio is over its share while news, back from idle, is under it: news goes next...
    assert order[:2] == ["studio", "news"], order
    # ...but with no credit for the time it had nothing queued: never twice in a row, whereas
    # by its use alone (none) it would have had every start until both of its jobs were done.
    assert order.count("news") == 2, order
    assert all(a != b for a, b in itertools.pairwise(order) if a == "news"), order


async def test_a_tenant_without_a_share_is_refused_at_publish(
    js: JetStreamContext, prefix: str
) -> None:
    with pytest.raises(NoStreamResponseError):
        await submit(js, prefix, "intruder", "x1")
    await submit(js, prefix, "news", "ok1")  # the tenants named are served
    queue = await pool_queue(js, TOPO.subjects(Subjects(prefix)), "cpu")
    assert queue.queued == 1


async def test_cancel_finds_a_queued_job_in_its_tenants_lane(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    subjects = TOPO.subjects(Subjects(prefix))
    await submit(js, prefix, "news", "c1")
    await submit(js, prefix, "studio", "c2")
    assert await delete_queued(js, subjects, ["cpu"], "c1", "news")
    assert not await delete_queued(js, subjects, ["cpu"], "c1", "news")  # gone already
    slots = Slots({"cpu": 1})
    async with node(node_nc, prefix, slots) as (fetched, clock):
        assert await take(fetched, clock, slots) == "studio"
        # Delivered: a cancel leaves it to the node that holds it.
        assert not await delete_queued(js, subjects, ["cpu"], "c2", "studio")


async def test_a_pool_changes_layout_only_while_it_holds_no_job(nc: NATS, prefix: str) -> None:
    js = nc.jetstream(timeout=5)
    subjects = Subjects(prefix)
    plain = TopologySettings(ack_wait=30.0, pools=["cpu"])
    await ensure_topology(js, subjects, plain)
    await submit(js, prefix, "news", "queued-1")
    with pytest.raises(TopologyError, match="still holds 1 job"):
        await ensure_topology(js, subjects, TOPO)
    sub = await js.pull_subscribe_bind(subjects.consumer("cpu", "normal"), subjects.jobs_stream)
    (msg,) = await sub.fetch(1, timeout=5)
    await msg.ack_sync(timeout=5)
    await sub.unsubscribe()
    changed = await ensure_topology(js, subjects, TOPO)
    assert any("jobs-cpu-normal (deleted" in u for u in changed.updated)
    assert f"consumer {subjects.jobs_stream}/jobs-cpu-normal~news" in changed.created
    with pytest.raises(NotFoundError):
        await js.consumer_info(subjects.jobs_stream, subjects.consumer("cpu", "normal"))
    again = await ensure_topology(js, subjects, TOPO)
    assert not again.created and not again.updated  # the second run changes nothing
    # And back: the lanes go, the pool's plain consumers return.
    back = await ensure_topology(js, subjects, plain)
    assert f"consumer {subjects.jobs_stream}/jobs-cpu-normal" in back.created
    await submit(js, prefix, "intruder", "any-tenant-again")
