"""What an idle puller asks the server: a fallback poll peeks a lane it last saw empty only on
every EMPTY_POLLS-th poll (a job reaches such a lane only by a submit or a release, and both wake
a node), and still finds a job no hint brought it.

Measured before (bench/bench_idle.py, 100 idle nodes): every poll peeked all six lanes of the
pool, 1.2 consumer-info requests per idle node per second, 80 % of what idle nodes cost
nats-server. Real nats-server (conftest); each test counts requests or polls, never time.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from control.topology import TopologySettings, ensure_topology
from daemon.pull.puller import EMPTY_POLLS, PoolPuller
from daemon.pull.slots import Slots
from schemas.subjects import Subjects
from tests.integration.test_puller_wake import make_puller, running, submit
from tests.support.daemons import until

#: Long enough that half of it holds EMPTY_POLLS polls of POLL: the lane's ack wait does not
#: shorten the recheck here.
TOPO = TopologySettings(ack_wait=600.0, pools=["cpu"])
POLL = 0.2
POLLS = 2 * EMPTY_POLLS + 1
WITHIN = 120.0


@pytest_asyncio.fixture
async def js(nc: NATS, prefix: str) -> JetStreamContext:
    ctx = nc.jetstream(timeout=5)
    await ensure_topology(ctx, Subjects(prefix), TOPO)
    return ctx


def count_peeks(puller: PoolPuller) -> Counter[str]:
    """Consumer-info requests of the puller, per lane (consumer name)."""
    peeks: Counter[str] = Counter()
    info = puller.js.consumer_info

    async def counted(stream: str, consumer: str, *args: Any, **kw: Any) -> Any:
        peeks[consumer] += 1
        return await info(stream, consumer, *args, **kw)

    puller.js.consumer_info = counted  # type: ignore[method-assign]
    return peeks


async def polls(puller: PoolPuller, n: int) -> None:
    async def done() -> bool:
        return puller.polled >= n

    await until(done, WITHIN)


async def test_a_poll_peeks_a_lane_seen_empty_only_every_few_polls(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    puller, _ = make_puller(node_nc, prefix, Slots({"cpu": 2}), POLL)
    peeks = count_peeks(puller)
    async with running(puller):
        await polls(puller, POLLS)
    assert len(peeks) == 6
    for lane in peeks:
        # Binding asks up to twice (a due lane: is it there?), the first sweep once, then every
        # EMPTY_POLLS-th poll; it was once per poll.
        assert 3 <= peeks[lane] <= 3 + -(-puller.polled // EMPTY_POLLS), (lane, peeks)


async def test_a_node_that_hears_no_hints_peeks_every_lane_at_every_poll(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    """Without its wake subscription, polling is how the node learns of every job."""
    puller, _ = make_puller(node_nc, prefix, Slots({"cpu": 2}), POLL, wake=False)
    peeks = count_peeks(puller)
    async with running(puller):
        await polls(puller, POLLS)
        polled = puller.polled
    assert all(peeks[lane] >= polled for lane in peeks) and len(peeks) == 6


async def test_a_job_whose_hint_went_elsewhere_is_found_by_a_poll(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    """A node hears its pool's submits, but this job's hint woke another node (here: a subject
    nobody publishes on stands for the pool's), and its lane was seen empty: a later poll
    peeks it again and takes the job; nak'd, it is taken again at a poll too."""
    slots = Slots({"cpu": 1})
    puller, fetched = make_puller(node_nc, prefix, slots, POLL)
    puller.wake.subject = f"{prefix}.heard-elsewhere"
    async with running(puller):
        await polls(puller, 2)  # every lane seen empty, some polls since
        assert len(puller._empty) == 6
        await submit(js, prefix, "normal", "unheard-1")
        msg, prio = await asyncio.wait_for(fetched.get(), WITHIN)
        assert prio == "normal" and msg.subject.endswith(".unheard-1")
        assert puller.woken == 0 and sum(puller.wake.hints.values()) == 0
        await msg.nak()  # a redelivery sends no hint either
        slots.release("cpu")
        again, _ = await asyncio.wait_for(fetched.get(), WITHIN)
        assert again.subject == msg.subject and again.metadata.num_delivered == 2
        await again.ack_sync(timeout=5)
        slots.release("cpu")
        assert puller.woken == 0


def test_the_recheck_comes_within_half_the_ack_wait() -> None:
    """A job taken from a lane seen empty by a node that then dies is seen out (and so peeked
    at every poll) before JetStream hands it out again."""
    puller = PoolPuller(
        None,  # type: ignore[arg-type]
        Subjects(), "cpu", Slots({"cpu": 1}), lambda *_: None, fetch_timeout=5.0,
    )  # fmt: skip
    assert puller._empty_polls(None) == EMPTY_POLLS
    assert puller._empty_polls(120.0) == EMPTY_POLLS
    assert puller._empty_polls(30.0) == 3
    assert puller._empty_polls(5.0) == 1  # every poll, as before
