"""Processing windows and aging in the pull loop: real nats-server, real consumers, real slots.

Time is an injected clock (no test waits for a real window): `Clock` reads a set instant, or,
once told to run, that instant plus the real time since the puller first looked at it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

import daemon.pull.puller as puller_mod
from control.topology import TopologySettings, ensure_topology
from daemon.pull.puller import PoolPuller
from daemon.pull.slots import Slots
from daemon.pull.windows import Windows
from schemas.subjects import Subjects
from schemas.windows import WindowRule
from tests.support.daemons import until

TOPO = TopologySettings(ack_wait=30.0, pools=["cpu"])
NEVER_POLL = 3600.0  # the fallback poll: longer than any test runs
WITHIN = 120.0  # only so that a broken puller fails the test instead of hanging it
PARIS = ZoneInfo("Europe/Paris")
NIGHT_LOW = WindowRule(priorities=["low"], start="22:00", end="06:00", tz="Europe/Paris")
Fetched = asyncio.Queue[tuple[Msg, str, datetime]]


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at, self.running = at, False
        self._since: float | None = None

    def set(self, at: datetime) -> None:
        self.at, self._since, self.running = at, None, False

    def run_from(self, at: datetime) -> None:
        """Tick in real time from `at`, starting at the next reading."""
        self.at, self._since, self.running = at, None, True

    def __call__(self) -> datetime:
        if not self.running:
            return self.at
        if self._since is None:
            self._since = time.monotonic()
        return self.at + timedelta(seconds=time.monotonic() - self._since)


@pytest_asyncio.fixture
async def js(nc: NATS, prefix: str) -> JetStreamContext:
    ctx = nc.jetstream(timeout=5)
    await ensure_topology(ctx, Subjects(prefix), TOPO)
    return ctx


async def submit(js: JetStreamContext, prefix: str, priority: str, job_id: str) -> None:
    subject = Subjects(prefix).submit("default", "cpu", priority, job_id)
    await js.publish(subject, b"{}", headers={"Nats-Msg-Id": job_id})


def make_puller(
    node: NATS, prefix: str, slots: Slots, clock: Clock, fetch_timeout: float, **kw: object
) -> tuple[PoolPuller, Fetched]:
    fetched: Fetched = asyncio.Queue()
    puller = PoolPuller(
        node.jetstream(timeout=5), Subjects(prefix), "cpu", slots,
        lambda msg, _pool, prio: fetched.put_nowait((msg, prio, clock())),
        fetch_timeout=fetch_timeout, wake_source=node, now=clock, **kw,  # type: ignore[arg-type]
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
    await msg.ack_sync(timeout=5)
    slots.release("cpu")


async def consumer(js: JetStreamContext, prefix: str, prio: str) -> tuple[int, int, int]:
    """(waiting, delivered and unacked, redelivered) of the pool's tier."""
    s = Subjects(prefix)
    info = await js.consumer_info(s.jobs_stream, s.consumer("cpu", prio))
    return info.num_pending, info.num_ack_pending, info.num_redelivered


async def test_a_closed_tier_is_left_in_the_stream_until_its_window_opens(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=PARIS))
    slots = Slots({"cpu": 2})
    windows = Windows([NIGHT_LOW])
    puller, fetched = make_puller(node_nc, prefix, slots, clock, 0.2, windows=lambda: windows)
    async with running(puller):
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        await submit(js, prefix, "low", "night-1")
        await submit(js, prefix, "high", "day-1")
        msg, prio, _ = await asyncio.wait_for(fetched.get(), WITHIN)
        assert prio == "high"  # the open tier still runs
        await finish(msg, slots)
        # Many sweeps later (the fallback poll and the low submit's wake), low is untouched:
        # still waiting in the stream, never delivered, so nothing to nak or hand back.
        polled = puller.polled
        await until(lambda: _at_least(puller.polled, polled + 5), WITHIN)
        assert fetched.empty() and slots.free("cpu") == 2
        assert await consumer(js, prefix, "low") == (1, 0, 0)
        assert puller.open_tiers() == ["high", "normal"]
        clock.set(datetime(2026, 6, 10, 22, 30, tzinfo=PARIS))  # inside the window
        msg, prio, at = await asyncio.wait_for(fetched.get(), WITHIN)
        assert (prio, msg.subject.rsplit(".", 1)[1]) == ("low", "night-1")
        assert msg.metadata.num_delivered == 1 and at.hour == 22
        await finish(msg, slots)


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted


async def test_an_idle_puller_wakes_for_a_window_opening(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    """No poll, no submit during the wait: only the bound on the idle wait can fetch the job."""
    await submit(js, prefix, "low", "at-ten")
    opening = datetime(2026, 6, 10, 22, 0, tzinfo=PARIS)
    clock = Clock(opening)
    clock.run_from(opening - timedelta(seconds=3))
    slots = Slots({"cpu": 1})
    windows = Windows([NIGHT_LOW])
    puller, fetched = make_puller(
        node_nc, prefix, slots, clock, NEVER_POLL, windows=lambda: windows
    )
    async with running(puller):
        msg, prio, at = await asyncio.wait_for(fetched.get(), WITHIN)
        assert prio == "low" and at >= opening  # not before the window opened
        assert puller.opened >= 1 and puller.polled == 0
        await finish(msg, slots)


async def test_a_runtime_change_applies_to_an_idle_puller(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=PARIS))
    slots = Slots({"cpu": 1})
    rules = {"now": Windows([NIGHT_LOW])}
    puller, fetched = make_puller(
        node_nc, prefix, slots, clock, NEVER_POLL, windows=lambda: rules["now"]
    )
    async with running(puller):
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        await submit(js, prefix, "low", "held")
        await until(lambda: _at_least(puller.woken, 1), WITHIN)  # woken, swept, skipped
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        assert fetched.empty() and await consumer(js, prefix, "low") == (1, 0, 0)
        rules["now"] = Windows()
        puller.recheck()  # what the daemon does on `node.windows`
        msg, prio, _ = await asyncio.wait_for(fetched.get(), WITHIN)
        assert prio == "low"
        await finish(msg, slots)


async def test_a_node_closed_for_every_tier_leaves_the_wake_group(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=PARIS))
    slots = Slots({"cpu": 1})
    rules = {"now": Windows([WindowRule(start="22:00", end="06:00", tz="Europe/Paris")])}
    puller, fetched = make_puller(
        node_nc, prefix, slots, clock, NEVER_POLL, windows=lambda: rules["now"]
    )
    async with running(puller):
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        assert puller.wake.paused and puller.open_tiers() == []
        await submit(js, prefix, "high", "while-closed")
        assert await consumer(js, prefix, "high") == (1, 0, 0)
        # A change that opens nothing: one look, then the same wait (no spinning on the event).
        before = puller.woken
        puller.recheck()
        await until(lambda: _at_least(puller.woken, before + 1), WITHIN)
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        await asyncio.sleep(0.5)  # room for a spin to show, not a measurement
        assert puller.woken == before + 1 and fetched.empty()
        rules["now"] = Windows()
        puller.recheck()
        msg, prio, _ = await asyncio.wait_for(fetched.get(), WITHIN)
        assert prio == "high" and not puller.wake.paused
        await finish(msg, slots)


async def _run_with_high_arriving(
    js: JetStreamContext, node_nc: NATS, prefix: str, aging_every: int, starts: int
) -> tuple[list[str], PoolPuller]:
    """One slot; two high jobs and one low waiting, and a new high job after each start."""
    await submit(js, prefix, "low", "low-1")
    for i in range(2):
        await submit(js, prefix, "high", f"high-pre-{i}")
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=PARIS))
    slots = Slots({"cpu": 1})
    puller, fetched = make_puller(node_nc, prefix, slots, clock, 0.5, aging_every=aging_every)
    order: list[str] = []
    async with running(puller):
        for i in range(starts):  # bounded in count, and each wait in time
            msg, prio, _ = await asyncio.wait_for(fetched.get(), WITHIN)
            order.append(prio)
            await submit(js, prefix, "high", f"high-{i}")
            await finish(msg, slots)
    return order, puller


async def test_low_starts_within_the_aging_bound_while_high_keeps_arriving(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    order, puller = await _run_with_high_arriving(js, node_nc, prefix, 3, starts=8)
    assert "low" in order and order.index("low") <= 3, order  # after at most 3 high starts
    assert order.count("low") == 1 and puller.aged == 1


async def test_strict_order_starves_low_without_aging(
    js: JetStreamContext, node_nc: NATS, prefix: str
) -> None:
    order, puller = await _run_with_high_arriving(js, node_nc, prefix, 0, starts=8)
    assert order == ["high"] * 8 and puller.aged == 0
    assert (await consumer(js, prefix, "low"))[0] == 1


async def test_an_unheard_low_job_ages_once_aging_may_look_below_again(
    js: JetStreamContext, node_nc: NATS, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that hears no submits (no wake subscription) learns of a lower tier's job only
    from aging's peek after a start, which is skipped for AGING_PEEK_S once it found nothing
    below (here until the test ends the wait, so no step depends on the clock). While it is
    skipped, high starts on in strict order; once it is due again, the low job starts within
    the aging bound."""
    monkeypatch.setattr(puller_mod, "AGING_PEEK_S", 1e9)
    s = Subjects(prefix)
    low_lane = s.consumer("cpu", "low")
    node_js = node_nc.jetstream(timeout=5)
    asked: list[str] = []
    at_start: list[int] = []
    info = node_js.consumer_info

    async def counted(stream: str, consumer: str, *args: Any, **kw: Any) -> Any:
        asked.append(consumer)
        return await info(stream, consumer, *args, **kw)

    monkeypatch.setattr(node_js, "consumer_info", counted)
    fetched: asyncio.Queue[tuple[Msg, str]] = asyncio.Queue()

    def spawn(msg: Msg, _pool: str, prio: str) -> None:
        at_start.append(len(asked))
        fetched.put_nowait((msg, prio))

    slots = Slots({"cpu": 1})
    puller = PoolPuller(node_js, s, "cpu", slots, spawn, fetch_timeout=NEVER_POLL, aging_every=2)
    await submit(js, prefix, "high", "high-pre")
    order: list[str] = []

    async def next_start(job_id: str) -> Msg:
        await submit(js, prefix, "high", job_id)  # high work keeps arriving
        await finish(msg, slots)
        got, prio = await asyncio.wait_for(fetched.get(), WITHIN)
        order.append(prio)
        return got

    async with running(puller):
        msg, _ = await asyncio.wait_for(fetched.get(), WITHIN)

        async def looked_below() -> bool:
            return low_lane in asked[at_start[0] :]

        await until(looked_below, WITHIN)  # aging's peek after the first start: nothing there
        peeked = len(asked)
        await submit(js, prefix, "low", "low-1")  # unheard: this node has no wake-up
        for i in range(4):
            msg = await next_start(f"high-{i}")
        assert order == ["high"] * 4, order  # aging_every is 2, but nothing was seen below
        assert low_lane not in asked[peeked:], asked[peeked:]
        monkeypatch.setattr(puller_mod, "AGING_PEEK_S", 0.0)  # the skip runs out
        for i in range(4, 8):
            msg = await next_start(f"high-{i}")
        await finish(msg, slots)
    # Seen at the first or second start after that, then 2 high starts at most, then low.
    assert "low" in order[5:7] and order.count("low") == 1 and puller.aged == 1, order


def test_window_rules_decode_from_json() -> None:
    raw = b'{"priorities": ["low"], "start": "22:00", "end": "06:00", "tz": "Europe/Paris"}'
    assert msgspec.json.decode(raw, type=WindowRule) == NIGHT_LOW
