"""A job the server delivers after a fetch stopped waiting (a busy event loop: the client's wait
ends before the message is read off the socket) sits in the subscription's queue. Seen at 1,000
simulated nodes, where such jobs waited for the next fallback poll (p95 dispatch 5.3 s = the
5 s `fetch_timeout`). The puller takes it at once instead."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from nats.js import JetStreamContext

from daemon.pull.puller import PoolPuller
from daemon.pull.slots import Slots
from schemas.subjects import Lane, Subjects

NEVER = 3600.0


class LateSub:
    """A pull subscription whose first fetch times out client-side while the message lands in
    its queue; the next fetch returns it from the queue, as nats-py's does."""

    def __init__(self, late: bool = True) -> None:
        self.queue: list[object] = []
        self.late = late
        self.fetches = 0

    @property
    def pending_msgs(self) -> int:
        return len(self.queue)

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[object]:  # noqa: ASYNC109
        self.fetches += 1
        if self.queue:
            taken, self.queue = self.queue[:batch], self.queue[batch:]
            return taken
        if self.late:
            self.late = False
            self.queue.append(object())  # arrived just after the wait ended
        raise TimeoutError


def puller_with(sub: LateSub, spawned: list[object]) -> PoolPuller:
    p = PoolPuller(
        cast(JetStreamContext, None), Subjects(), "cpu", Slots({"cpu": 2}),
        lambda msg, _pool, _prio: spawned.append(msg), fetch_timeout=NEVER,
    )  # fmt: skip
    lane = Lane(Subjects().consumer("cpu", "normal"), Subjects().jobs_filter("cpu", "normal"))
    p._subs = {"normal": [(lane, cast(Any, sub))]}
    return p


async def test_a_fetch_that_timed_out_takes_what_landed_in_the_queue_meanwhile() -> None:
    spawned: list[object] = []
    sub = LateSub()
    p = puller_with(sub, spawned)
    k = p.slots.reserve("cpu")
    msgs = await p._fetch("normal", k, 0)
    assert len(msgs) == 1 and spawned == msgs and p.late == 1
    assert p.slots.free("cpu") == 1  # the unfilled slot went back; the job holds one


async def test_an_empty_fetch_costs_no_second_request() -> None:
    sub = LateSub(late=False)
    p = puller_with(sub, [])
    assert await p._fetch("normal", p.slots.reserve("cpu"), 0) == []
    assert sub.fetches == 1 and p.late == 0 and p.slots.free("cpu") == 2


async def test_an_idle_wait_ends_for_a_late_delivery_not_at_the_poll() -> None:
    sub = LateSub(late=False)
    p = puller_with(sub, [])
    sub.queue.append(object())  # delivered while the sweep was ending
    await asyncio.wait_for(p._idle(), 5)
    assert (p.late, p.woken, p.polled) == (1, 0, 0)

    async def lands_later() -> None:
        await asyncio.sleep(0.1)
        sub.queue.append(object())

    task = asyncio.create_task(lands_later())
    await asyncio.wait_for(p._idle(), 5)  # ends at the look a moment in, not after an hour
    await task
    assert (p.late, p.woken, p.polled) == (2, 0, 0)
