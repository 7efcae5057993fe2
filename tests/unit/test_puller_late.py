"""A job the server delivers after a fetch stopped waiting (a busy event loop: the client's wait
ends before the message is read off the socket) sits in the subscription's queue. Seen at 1,000
simulated nodes, where such jobs waited for the next fallback poll (p95 dispatch 5.3 s = the
5 s `fetch_timeout`). The puller takes it at once instead."""

from __future__ import annotations

import asyncio
from collections import deque
from types import SimpleNamespace
from typing import Any, cast

from nats.js import JetStreamContext

from daemon.pull.puller import PoolPuller
from daemon.pull.slots import Slots
from schemas.subjects import Lane, Subjects

NEVER = 3600.0


class Delivered:
    """A message in the queue: a job, or the status a pull gets when it expires."""

    def __init__(self, status: str | None = None) -> None:
        self.headers = None if status is None else {"Status": status}


class LateSub:
    """A pull subscription shaped as nats-py's (its queue where the client keeps what the
    server delivered) whose first fetch times out client-side while the job lands in the
    queue; the next fetch returns it from the queue, as nats-py's does."""

    def __init__(self, late: bool = True) -> None:
        self._sub = SimpleNamespace(_pending_queue=SimpleNamespace(_queue=deque()))
        self.late = late
        self.fetches = 0

    @property
    def queue(self) -> deque[Delivered]:
        return cast(deque[Delivered], self._sub._pending_queue._queue)

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[object]:  # noqa: ASYNC109
        self.fetches += 1
        jobs = [m for m in self.queue if m.headers is None]  # a fetch discards statuses
        self.queue.clear()
        if jobs:
            return list(jobs[:batch])
        if self.late:
            self.late = False
            self.queue.append(Delivered())  # arrived just after the wait ended
        else:
            self.queue.append(Delivered("408"))  # the expired pull's status, as usual
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
    assert len(sub.queue) == 1  # the expired pull's status: not a job


async def test_an_expired_pulls_status_does_not_end_an_idle_wait() -> None:
    """Counted as a job, the status every empty fetch leaves would make an idle node sweep
    (and peek the broker) without pause."""
    sub = LateSub(late=False)
    sub.queue.append(Delivered("408"))
    p = puller_with(sub, [])
    p.fetch_timeout = 0.7  # past the look a moment in, so that look is made
    await asyncio.wait_for(p._idle(), 5)
    assert (p.late, p.woken, p.polled) == (0, 0, 1)


async def test_an_idle_wait_ends_for_a_late_delivery_not_at_the_poll() -> None:
    sub = LateSub(late=False)
    p = puller_with(sub, [])
    sub.queue.append(Delivered("408"))
    sub.queue.append(Delivered())  # delivered while the sweep was ending
    await asyncio.wait_for(p._idle(), 5)
    assert (p.late, p.woken, p.polled) == (1, 0, 0)

    async def lands_later() -> None:
        await asyncio.sleep(0.1)
        sub.queue.append(Delivered())

    task = asyncio.create_task(lands_later())
    await asyncio.wait_for(p._idle(), 5)  # ends at the look a moment in, not after an hour
    await task
    assert (p.late, p.woken, p.polled) == (2, 0, 0)
