"""The pull loop's wake-up: an idle puller holds no pull open and a submit makes it sweep at once.

Real nats-server (conftest), real JetStream consumers, real slot accounting. `fetch_timeout` is
the idle fallback poll; set to an hour, it never runs out during a test, so a job that is fetched
came through the wake. The puller's `woken`/`polled` counters say which path ended each idle wait;
no assertion is about how fast anything happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import nats
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from common.natsconn import sync_subscriptions
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from daemon.pull.puller import PoolPuller
from daemon.pull.slots import Slots
from daemon.pull.wake import Wake
from schemas.common import PRIORITIES
from schemas.subjects import Subjects
from tests.support.daemons import config, has, until

TOPO = TopologySettings(ack_wait=5.0, pools=["cpu"])
NEVER_POLL = 3600.0  # the fallback poll: longer than any test runs
WITHIN = 120.0  # only so that a broken wake fails the test instead of hanging it

Fetched = asyncio.Queue[tuple[Msg, str]]


@pytest_asyncio.fixture
async def js(nc: NATS, prefix: str) -> JetStreamContext:
    ctx = nc.jetstream(timeout=5)
    await ensure_topology(ctx, Subjects(prefix), TOPO)
    return ctx


async def submit(js: JetStreamContext, prefix: str, priority: str, job_id: str) -> None:
    subject = Subjects(prefix).submit("default", "cpu", priority, job_id)
    await js.publish(subject, b"{}", headers={"Nats-Msg-Id": job_id})


def make_puller(
    node: NATS, prefix: str, slots: Slots, fetch_timeout: float, *, wake: bool = True
) -> tuple[PoolPuller, Fetched]:
    fetched: Fetched = asyncio.Queue()
    puller = PoolPuller(
        node.jetstream(timeout=5), Subjects(prefix), "cpu", slots,
        lambda msg, _pool, prio: fetched.put_nowait((msg, prio)),
        fetch_timeout=fetch_timeout, wake_source=node if wake else None,
    )  # fmt: skip
    return puller, fetched


@contextlib.asynccontextmanager
async def running(puller: PoolPuller) -> AsyncIterator[None]:
    task = asyncio.create_task(puller.run())
    try:
        yield
    finally:
        puller.stop()
        await asyncio.wait_for(task, WITHIN)


async def finish(msg: Msg, slots: Slots) -> None:
    """What a job's `finally` does: ack, then hand its slot back."""
    await msg.ack_sync(timeout=5)
    slots.release("cpu")


async def test_wake_fetches_without_waiting_out_the_poll(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    slots = Slots({"cpu": 2})
    puller, fetched = make_puller(node_nc, prefix, slots, NEVER_POLL)
    async with running(puller):
        await asyncio.wait_for(puller.idle.wait(), WITHIN)  # swept, found nothing, waits
        await submit(js, prefix, "normal", "wake-1")
        msg, prio = await asyncio.wait_for(fetched.get(), WITHIN)
        assert (prio, msg.subject.rsplit(".", 1)[1]) == ("normal", "wake-1")
        assert (puller.woken, puller.polled) == (1, 0)  # the submit ended the wait, not the poll
        await finish(msg, slots)


async def test_fallback_poll_without_wake_and_for_redeliveries(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    slots = Slots({"cpu": 1})
    puller, fetched = make_puller(node_nc, prefix, slots, 0.5, wake=False)
    async with running(puller):
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        await submit(js, prefix, "high", "poll-1")
        msg, prio = await asyncio.wait_for(fetched.get(), WITHIN)
        assert prio == "high" and msg.metadata.num_delivered == 1
        assert sum(puller.wake.hints.values()) == 0  # nothing heard: the poll found it
        assert puller.woken == 0 and puller.polled >= 1
        # A nak'd job is redelivered with no submit to wake anyone: the poll finds it too.
        await msg.nak()
        slots.release("cpu")
        again, _ = await asyncio.wait_for(fetched.get(), WITHIN)
        assert again.subject == msg.subject and again.metadata.num_delivered == 2
        await finish(again, slots)


async def test_high_runs_first_with_one_slot(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    for job_id, prio in [("l1", "low"), ("l2", "low"), ("h1", "high"), ("h2", "high")]:
        await submit(js, prefix, prio, job_id)
    slots = Slots({"cpu": 1})
    puller, fetched = make_puller(node_nc, prefix, slots, NEVER_POLL)
    order = []
    async with running(puller):
        for _ in range(4):
            msg, prio = await asyncio.wait_for(fetched.get(), WITHIN)
            assert fetched.empty()  # one slot: one job in hand
            order.append(prio)
            await finish(msg, slots)
    assert order == ["high", "high", "low", "low"]


async def ack_pending(js: JetStreamContext, prefix: str) -> int:
    subjects = Subjects(prefix)
    total = 0
    for prio in PRIORITIES:
        info = await js.consumer_info(subjects.jobs_stream, subjects.consumer("cpu", prio))
        total += info.num_ack_pending
    return total


async def test_never_more_in_flight_than_slots(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    slots = Slots({"cpu": 2})
    puller, fetched = make_puller(node_nc, prefix, slots, NEVER_POLL)
    held: list[Msg] = []
    async with running(puller):
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        for i in range(6):
            await submit(js, prefix, PRIORITIES[i % 3], f"cap-{i}")
        for _ in range(2):
            held.append((await asyncio.wait_for(fetched.get(), WITHIN))[0])
        # Full: the puller leaves the wake group, and a further submit fetches nothing.
        await until(_paused(puller), WITHIN)
        await submit(js, prefix, "high", "cap-extra")
        assert fetched.empty() and await ack_pending(js, prefix) == 2
        done, taken = 0, 2
        while held:
            await finish(held.pop(0), slots)
            done += 1
            if taken < 7:  # a freed slot is filled again: the queue is not empty yet
                held.append((await asyncio.wait_for(fetched.get(), WITHIN))[0])
                taken += 1
            assert len(held) <= 2 and await ack_pending(js, prefix) <= 2
    assert done == 7 and fetched.empty()


def _paused(puller: PoolPuller) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return puller.wake.paused

    return check


@contextlib.asynccontextmanager
async def wakes(nats_url: str, prefix: str, n: int) -> AsyncIterator[list[Wake]]:
    """`n` nodes' wake subscriptions on a pool no stream stores, each on its own connection."""
    conns = [await nats.connect(nats_url, connect_timeout=5) for _ in range(n)]
    subject = Subjects(prefix).pool_submits("wakepool")
    out = [Wake(c, subject) for c in conns]
    try:
        for w in out:
            assert await w.start()
        yield out
    finally:
        for w in out:
            await w.stop()
        for c in conns:
            await c.close()


async def _hints(nc: NATS, prefix: str, count: int, ws: list[Wake]) -> list[int]:
    """Publish `count` submits; what each wake was delivered (server-side, not callback time):
    the producer's flush puts them in the subscribers' buffers, each one's own round trip
    after that reads them."""
    for i in range(count):
        await nc.publish(f"{prefix}.submit.default.wakepool.normal.w-{i}", b"{}")
    await nc.flush(timeout=5)
    for w in ws:
        assert w.nc is not None
        await sync_subscriptions(w.nc)
    return [w.received for w in ws]


async def test_a_submit_wakes_one_node_not_the_pool(nc: NATS, nats_url: str, prefix: str) -> None:
    async with wakes(nats_url, prefix, 3) as ws:
        got = await _hints(nc, prefix, 30, ws)
        assert sum(got) == 30, got  # each submit reached one node of the group
        # A node with no free slot leaves the group: the others get every hint.
        await ws[0].pause()
        # The UNSUB goes out on ws[0]'s own connection and the hints on another: without this
        # round trip the server may still hand some hints to ws[0], which drops them.
        assert ws[0].nc is not None
        await sync_subscriptions(ws[0].nc)
        before = [w.received for w in ws[1:]]
        got = await _hints(nc, prefix, 10, ws[1:])
        assert ws[0].paused and sum(got) - sum(before) == 10
        assert await ws[0].resume() and not ws[0].paused


async def test_daemon_is_woken_by_a_submit(
    js: JetStreamContext, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """The app's wiring: a real daemon whose fallback poll never runs out still runs a new job."""
    cfg = config(nats_url, prefix, tmp_path / "n1", "n1", fetch_timeout=NEVER_POLL)
    d = Daemon(cfg)
    await d.start()
    try:
        puller = d.pullers.puller("cpu")
        assert puller is not None
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        spec = {"v": 1, "job_id": "wake-d", "input": "canary://", "operation": {"op": "canary"},
                "max_attempts": 1}  # fmt: skip
        subject = Subjects(prefix).submit("default", "cpu", "normal", "wake-d")
        await js.publish(subject, json.dumps(spec).encode(), headers={"Nats-Msg-Id": "wake-d"})
        await until(has(js, prefix, "wake-d", "completed"), WITHIN)
        assert puller.polled == 0 and puller.woken >= 1
    finally:
        await d.stop(force=True)


async def test_an_empty_fetch_leaves_no_false_late_job(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    """The server answers an expired pull with a status that lands in the subscription's queue
    after the client stopped waiting: it is no job, so an idle wait is not cut short for it."""
    slots = Slots({"cpu": 1})
    puller, _ = make_puller(node_nc, prefix, slots, 0.7)
    await puller._bind()
    try:
        puller.wake.heard["normal"].add("default")  # a submit's hint, and no job behind it
        assert await puller._fetch("normal", slots.reserve("cpu"), 1) == []
        await sync_subscriptions(node_nc)  # whatever the server sent before this has arrived
        (lane, sub) = puller._subs["normal"][1]
        assert not lane.due
        assert sub.pending_msgs >= 1  # the expired pull's status is in the queue...
        await asyncio.wait_for(puller._idle(), WITHIN)
        assert (puller.late, puller.polled) == (0, 1)  # ...and did not end the wait
    finally:
        await puller._unbind()
