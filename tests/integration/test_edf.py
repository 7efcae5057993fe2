"""Earliest deadline first against a real nats-server: the leader's releaser moves held jobs into
their tier's due lane in deadline order, keeps that lane only as deep as the free slots plus a
margin, survives a leader that died between publish and delete, withdraws the copy of a job
cancelled during its release, and nodes pull the due lane before the plain one.

The tests drive `Releaser.tick()` themselves with a free-slot count they set, so what is
released is decided by the counts, never by how fast the machine is. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import APIError, NotFoundError

import control.deadlines.release as release_mod
import daemon.pull.puller as puller_mod
from common.jsdelete import delete_stored
from control.api.jobcancel import delete_queued
from control.deadlines.release import Held, Releaser, due_headers, held_of
from control.topology import TopologySettings, ensure_topology
from daemon.pull.puller import PoolPuller
from daemon.pull.slots import HOLD, Hold, Slots
from schemas.codec import encode
from schemas.common import Priority
from schemas.jobs import JobSpec
from schemas.operations import Probe
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects, parse_stored

TOPO = TopologySettings(ack_wait=30.0, pools=["cpu"])
TENANT = "acme"
NEVER_POLL = 3600.0
WITHIN = 60.0
LANE_WAIT = 10.0
TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

Fetched = asyncio.Queue[tuple[Msg, Hold | None]]


class Free:
    """The free slots the test says the pool has, per (pool, priority); what was asked."""

    def __init__(self, free: int = 0) -> None:
        self.free = free
        self.asked: list[tuple[str, str]] = []

    def __call__(self, pool: str, priority: str) -> int:
        self.asked.append((pool, priority))
        return self.free


@pytest_asyncio.fixture
async def js(nc: NATS, prefix: str) -> JetStreamContext:
    ctx = nc.jetstream(timeout=5)
    await ensure_topology(ctx, Subjects(prefix), TOPO)
    return ctx


@pytest.fixture
def subjects(prefix: str) -> Subjects:
    return TOPO.subjects(Subjects(prefix))


def spec(job_id: str, deadline: datetime | None, priority: Priority = "normal") -> JobSpec:
    return JobSpec(job_id=job_id, tenant=TENANT, priority=priority, input="file:///in.mp4",
                   operation=Probe(), deadline=deadline)  # fmt: skip


async def hold(
    js: JetStreamContext,
    subjects: Subjects,
    job_id: str,
    deadline: datetime | None,
    priority: Priority = "normal",
) -> PubAck:
    """Submit a job to its held subject, as the API does for one with a deadline (a job without
    one is held only if a producer sends it there: it is released last)."""
    return await js.publish(
        subjects.timed(TENANT, "cpu", priority, job_id), encode(spec(job_id, deadline, priority)),
        headers={"Nats-Msg-Id": f"{TENANT}.{job_id}", "traceparent": TRACE},
        stream=subjects.jobs_stream,
    )  # fmt: skip


async def submit(js: JetStreamContext, subjects: Subjects, job_id: str) -> None:
    await js.publish(
        subjects.submit(TENANT, "cpu", "normal", job_id), encode(spec(job_id, None)),
        headers={"Nats-Msg-Id": f"{TENANT}.{job_id}"}, stream=subjects.jobs_stream,
    )  # fmt: skip


def in_hours(hours: float) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


async def pending(js: JetStreamContext, subjects: Subjects, prio: str = "normal") -> int:
    info = await js.consumer_info(subjects.jobs_stream, subjects.due_consumer("cpu", prio))
    return info.num_pending or 0


async def take_due(
    js: JetStreamContext, subjects: Subjects, n: int, prio: str = "normal"
) -> list[Msg]:
    """The next `n` jobs of the tier's due lane, in its order, each acked (a node ran it)."""
    sub = await js.pull_subscribe_bind(subjects.due_consumer("cpu", prio), subjects.jobs_stream)
    msgs: list[Msg] = []
    try:
        while len(msgs) < n:
            for msg in await sub.fetch(n - len(msgs), timeout=WITHIN):
                await msg.ack_sync(timeout=5)
                msgs.append(msg)
    finally:
        await sub.unsubscribe()
    return msgs


def job_ids(msgs: list[Msg]) -> list[str]:
    return [parse_stored(m.subject).job_id for m in msgs]


async def held_left(js: JetStreamContext, subjects: Subjects) -> list[str]:
    """The job ids still held, in stream order."""
    found: list[str] = []
    seq = 1
    while True:
        try:
            msg = await js.get_msg(
                subjects.jobs_stream, seq=seq, subject=subjects.timed_wildcard, next=True
            )
        except NotFoundError:
            return found
        found.append((msg.subject or "").rsplit(".", 1)[-1])
        seq = (msg.seq or seq) + 1


async def stored(js: JetStreamContext, subjects: Subjects) -> int:
    info = await js.stream_info(subjects.jobs_stream)
    return info.state.messages


async def held_msg(js: JetStreamContext, subjects: Subjects, job_id: str) -> Held:
    msg = await js.get_last_msg(
        subjects.jobs_stream, subjects.held_stored(TENANT, "cpu", "normal", job_id)
    )
    held = held_of(msg)
    assert held is not None
    return held


# -- order and depth ---------------------------------------------------------------------------
async def test_held_jobs_are_released_earliest_deadline_first(
    js: JetStreamContext, subjects: Subjects
) -> None:
    await hold(js, subjects, "in-3h", in_hours(3))
    await hold(js, subjects, "no-deadline", None)
    await hold(js, subjects, "in-1h", in_hours(1))
    await hold(js, subjects, "in-2h", in_hours(2))
    releaser = Releaser(js, None, subjects, Free(10))
    assert await releaser.tick() == 4
    assert releaser.stats.released == 4 and releaser.stats.withdrawn == 0
    assert await held_left(js, subjects) == []
    assert await stored(js, subjects) == 4  # moved, not copied

    msgs = await take_due(js, subjects, 4)
    assert job_ids(msgs) == ["in-1h", "in-2h", "in-3h", "no-deadline"]
    first = msgs[0]
    assert first.subject == subjects.due_stored(TENANT, "cpu", "normal", "in-1h")
    assert first.headers is not None
    assert first.headers["Nats-Msg-Id"] == f"{TENANT}.in-1h.due"
    assert first.headers["traceparent"] == TRACE  # the trace context travels with the job
    assert JOB_DECODER.decode(first.data).job_id == "in-1h"  # the body as submitted
    assert await releaser.tick() == 0  # nothing held any more


async def test_the_due_lane_is_kept_only_as_deep_as_the_free_slots_plus_margin(
    js: JetStreamContext, subjects: Subjects
) -> None:
    # Submitted latest deadline first, so stream order is the reverse of deadline order.
    for h in range(8, 0, -1):
        await hold(js, subjects, f"h{h}", in_hours(h))
    free = Free(0)
    releaser = Releaser(js, None, subjects, free, margin=2)
    assert await releaser.tick() == 2  # no free slot: the margin alone
    assert await pending(js, subjects) == 2
    assert await releaser.tick() == 0  # the lane is as deep as it should be
    assert await releaser.tick() == 0
    assert await pending(js, subjects) == 2

    free.free = 3  # three slots freed
    assert await releaser.tick() == 3
    assert await pending(js, subjects) == 5
    assert await releaser.tick() == 0

    # A node takes one (the earliest deadline): the next tick tops the lane up by one.
    assert job_ids(await take_due(js, subjects, 1)) == ["h1"]
    assert await pending(js, subjects) == 4
    assert await releaser.tick() == 1
    assert await pending(js, subjects) == 5
    assert await held_left(js, subjects) == ["h8", "h7"]  # the latest deadlines wait, held

    free.free = -4  # a negative count from a confused heartbeat counts as none
    assert await releaser.tick() == 0
    assert job_ids(await take_due(js, subjects, 5)) == ["h2", "h3", "h4", "h5", "h6"]
    assert releaser.stats.released == 6
    assert ("cpu", "normal") in free.asked


async def test_each_priority_has_its_own_due_lane(js: JetStreamContext, subjects: Subjects) -> None:
    await hold(js, subjects, "urgent-low", in_hours(1), priority="low")
    await hold(js, subjects, "later-normal", in_hours(5), priority="normal")
    free = Free(0)
    releaser = Releaser(js, None, subjects, free, margin=1)
    # One each: the low job's earlier deadline does not spend normal's room, nor the reverse.
    assert await releaser.tick() == 2
    assert sorted(free.asked) == [("cpu", "low"), ("cpu", "normal")]
    assert await pending(js, subjects, "low") == 1
    assert await pending(js, subjects, "normal") == 1
    (low,) = await take_due(js, subjects, 1, "low")
    assert low.subject == subjects.due_stored(TENANT, "cpu", "low", "urgent-low")
    (normal,) = await take_due(js, subjects, 1, "normal")
    assert normal.subject == subjects.due_stored(TENANT, "cpu", "normal", "later-normal")


# -- leader failover ---------------------------------------------------------------------------
async def test_a_release_cut_short_by_a_crash_leaves_exactly_one_copy(
    js: JetStreamContext, subjects: Subjects
) -> None:
    await hold(js, subjects, "crash-1", in_hours(1))
    held = await held_msg(js, subjects, "crash-1")
    # The old leader published the due copy and died before deleting the held message.
    first = await js.publish(
        subjects.due_stored(TENANT, "cpu", "normal", "crash-1"), held.data,
        headers=due_headers(held), stream=subjects.jobs_stream,
    )  # fmt: skip
    assert not first.duplicate
    assert await held_left(js, subjects) == ["crash-1"]
    assert await pending(js, subjects) == 1

    releaser = Releaser(js, None, subjects, Free(5))  # the next leader
    assert await releaser.tick() == 1
    assert releaser.stats.released == 1 and releaser.stats.withdrawn == 0
    assert await held_left(js, subjects) == []
    assert await pending(js, subjects) == 1  # its publish was a duplicate: one copy
    assert await stored(js, subjects) == 1
    (msg,) = await take_due(js, subjects, 1)
    assert msg.metadata.sequence.stream == first.seq
    assert await releaser.tick() == 0


async def test_a_cancel_after_a_crashed_release_removes_both_copies(
    js: JetStreamContext, subjects: Subjects
) -> None:
    """A leader died between publishing the due copy and deleting the held message; the job is
    cancelled before the next leader looks: both go, and nothing is released."""
    await hold(js, subjects, "crash-c", in_hours(1))
    held = await held_msg(js, subjects, "crash-c")
    await js.publish(
        subjects.due_stored(TENANT, "cpu", "normal", "crash-c"), held.data,
        headers=due_headers(held), stream=subjects.jobs_stream,
    )  # fmt: skip
    assert await delete_queued(js, subjects, ["cpu"], "crash-c", TENANT)
    assert await held_left(js, subjects) == [] and await pending(js, subjects) == 0
    assert not await delete_queued(js, subjects, ["cpu"], "crash-c", TENANT)
    releaser = Releaser(js, None, subjects, Free(5))
    assert await releaser.tick() == 0
    assert await pending(js, subjects) == 0 and await stored(js, subjects) == 0


async def test_deleting_a_missing_message_is_no_not_found_error(
    js: JetStreamContext, subjects: Subjects
) -> None:
    """How the server refuses to delete a message that is gone (a cancel took it) or was never
    stored: not a 404, so nats-py raises no NotFoundError, but a 500 "delete failed"; the
    releaser reads it as "not there"."""
    ack = await hold(js, subjects, "gone-1", in_hours(1))
    assert await js.delete_msg(subjects.jobs_stream, ack.seq)
    for seq, why in ((ack.seq, "no message found"), (ack.seq + 1000, "stream store EOF")):
        with pytest.raises(APIError) as refused:
            await js.delete_msg(subjects.jobs_stream, seq)
        assert not isinstance(refused.value, NotFoundError)
        assert (refused.value.err_code, refused.value.description) == (10057, why)
        assert not await delete_stored(js, subjects.jobs_stream, seq)


# -- cancel ------------------------------------------------------------------------------------
async def test_a_cancelled_held_job_is_never_released(
    js: JetStreamContext, subjects: Subjects
) -> None:
    await hold(js, subjects, "c1", in_hours(1))
    await hold(js, subjects, "c2", in_hours(2))
    assert await delete_queued(js, subjects, ["cpu"], "c1", TENANT)
    assert not await delete_queued(js, subjects, ["cpu"], "c1", TENANT)  # gone already
    assert not await delete_queued(js, subjects, ["cpu"], "c2", "other")  # not that tenant's
    releaser = Releaser(js, None, subjects, Free(10))
    assert await releaser.tick() == 1
    assert releaser.stats.released == 1 and releaser.stats.withdrawn == 0
    assert await pending(js, subjects) == 1
    assert job_ids(await take_due(js, subjects, 1)) == ["c2"]
    assert await stored(js, subjects) == 0


async def test_a_released_job_not_yet_taken_can_be_cancelled(
    js: JetStreamContext, subjects: Subjects
) -> None:
    await hold(js, subjects, "d1", in_hours(1))
    assert await Releaser(js, None, subjects, Free(1)).tick() == 1
    assert await pending(js, subjects) == 1
    assert await delete_queued(js, subjects, ["cpu"], "d1", TENANT)
    assert await pending(js, subjects) == 0
    assert await stored(js, subjects) == 0


async def test_a_cancel_after_the_scan_withdraws_the_released_copy(
    js: JetStreamContext, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(release_mod, "RESCAN_S", 1e9)  # no full rescan forgets the held job
    await hold(js, subjects, "r1", in_hours(1))
    await hold(js, subjects, "r2", in_hours(2))
    releaser = Releaser(js, None, subjects, Free(0), margin=1)
    assert await releaser.scan() == 2
    assert [h.job.job_id for h in releaser.held] == ["r1", "r2"]
    # The cancel deletes the held message the releaser has read but not released yet.
    assert await delete_queued(js, subjects, ["cpu"], "r1", TENANT)
    # Its copy is published, found orphaned and withdrawn; the next deadline takes its room.
    assert await releaser.tick() == 1
    assert releaser.stats.withdrawn == 1 and releaser.stats.released == 1
    assert releaser.held == []
    assert await pending(js, subjects) == 1
    assert job_ids(await take_due(js, subjects, 1)) == ["r2"]
    assert await stored(js, subjects) == 0


async def test_a_cancel_between_publish_and_delete_withdraws_the_copy(
    js: JetStreamContext, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    await hold(js, subjects, "w1", in_hours(1))
    publish = js.publish
    cancelled: list[bool] = []

    async def publish_then_cancel(*args: Any, **kw: Any) -> PubAck:
        ack = await publish(*args, **kw)
        cancelled.append(await delete_queued(js, subjects, ["cpu"], "w1", TENANT))
        return ack

    monkeypatch.setattr(js, "publish", publish_then_cancel)
    releaser = Releaser(js, None, subjects, Free(3))
    assert await releaser.tick() == 0
    # The cancel took the held message and the fresh copy (not handed out): nothing is left
    # for the releaser to withdraw.
    assert cancelled == [True]
    assert releaser.stats.withdrawn == 0 and releaser.stats.released == 0
    assert await pending(js, subjects) == 0
    assert await held_left(js, subjects) == []
    assert await stored(js, subjects) == 0


async def test_a_copy_a_node_took_already_is_left_to_it(
    js: JetStreamContext, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel during the release, but a node fetched the copy first: deleting it would not
    stop that node, so the releaser leaves it (the cancel goes to the node)."""
    await hold(js, subjects, "t1", in_hours(1))
    publish = js.publish
    taken: list[Msg] = []
    sub = await js.pull_subscribe_bind(subjects.due_consumer("cpu", "normal"), subjects.jobs_stream)

    async def publish_take_cancel(*args: Any, **kw: Any) -> PubAck:
        ack = await publish(*args, **kw)
        taken.extend(await sub.fetch(1, timeout=WITHIN))
        # The held message goes, but a node has the job: the cancel must go to it.
        assert not await delete_queued(js, subjects, ["cpu"], "t1", TENANT)
        return ack

    monkeypatch.setattr(js, "publish", publish_take_cancel)
    try:
        releaser = Releaser(js, None, subjects, Free(3))
        assert await releaser.tick() == 0
        assert releaser.stats.withdrawn == 0
        assert job_ids(taken) == ["t1"]
        info = await js.consumer_info(subjects.jobs_stream, subjects.due_consumer("cpu", "normal"))
        assert info.num_ack_pending == 1  # the node has it
        await taken[0].ack_sync(timeout=5)
    finally:
        await sub.unsubscribe()


# -- nodes -------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def node(
    node_nc: NATS, subjects: Subjects, slots: Slots, lane_wait: float = LANE_WAIT
) -> AsyncIterator[tuple[Fetched, PoolPuller]]:
    """A node of the pool. Its fallback poll never comes, so only a peek or a wake-up starts a
    job; a lane fetch waits long for a job a peek or a hint promised, so that no lane is passed
    over for a slow answer."""
    fetched: Fetched = asyncio.Queue()
    puller = PoolPuller(
        node_nc.jetstream(timeout=5), subjects, "cpu", slots,
        lambda msg, _pool, _prio: fetched.put_nowait((msg, HOLD.get())),
        fetch_timeout=NEVER_POLL, tier_timeout=lane_wait, wake_source=node_nc,
    )  # fmt: skip
    task = asyncio.create_task(puller.run())
    try:
        yield fetched, puller
    finally:
        puller.stop()
        await asyncio.wait_for(task, WITHIN)


async def take(fetched: Fetched, slots: Slots) -> Msg:
    """The next job started: acked, its slot released as a job's task does."""
    msg, hold_ = await asyncio.wait_for(fetched.get(), WITHIN)
    await msg.ack_sync(timeout=5)
    token = HOLD.set(hold_)
    try:
        slots.release("cpu")
    finally:
        HOLD.reset(token)
    return msg


async def test_a_node_takes_the_due_lane_before_the_plain_one(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS
) -> None:
    await submit(js, subjects, "plain-1")  # submitted first, and no deadline
    await submit(js, subjects, "plain-2")
    await hold(js, subjects, "due-1", in_hours(1))
    await hold(js, subjects, "due-2", in_hours(2))
    assert await Releaser(js, None, subjects, Free(0), margin=2).tick() == 2
    slots = Slots({"cpu": 1})
    async with node(node_nc, subjects, slots) as (fetched, _):
        started = [await take(fetched, slots) for _ in range(4)]
    assert job_ids(started) == ["due-1", "due-2", "plain-1", "plain-2"]
    assert started[0].subject.startswith(f"{subjects.prefix}.due.")
    assert await stored(js, subjects) == 0


async def test_a_quiet_due_lane_is_peeked_once_per_recheck_by_a_woken_fetch(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pool with no deadline job lately, a fetch woken by a submit asks its tier's due lane
    at most once per DUE_ORDER_RECHECK_S (here: not until the test ends the wait). A job
    released there that this node did not hear (it has no release wake-up; on a fleet, the
    release woke another node) goes first once the peek is due again."""
    monkeypatch.setattr(puller_mod, "DUE_ORDER_RECHECK_S", 1e9)
    slots = Slots({"cpu": 1})
    node_js = node_nc.jetstream(timeout=5)
    asked: list[str] = []
    info = node_js.consumer_info

    async def counted(stream: str, consumer: str, *args: Any, **kw: Any) -> Any:
        asked.append(consumer)
        return await info(stream, consumer, *args, **kw)

    fetched: Fetched = asyncio.Queue()
    puller = PoolPuller(
        node_js, subjects, "cpu", slots,
        lambda msg, _pool, _prio: fetched.put_nowait((msg, HOLD.get())),
        fetch_timeout=NEVER_POLL, tier_timeout=LANE_WAIT, wake_source=node_nc,
    )  # fmt: skip
    puller.wake.due = None  # hears submits, not releases
    due_lane = subjects.due_consumer("cpu", "normal")
    task = asyncio.create_task(puller.run())
    try:
        await asyncio.wait_for(puller.idle.wait(), WITHIN)  # every lane peeked once: empty
        monkeypatch.setattr(node_js, "consumer_info", counted)
        await hold(js, subjects, "due-1", in_hours(1))
        assert await Releaser(js, None, subjects, Free(1)).tick() == 1
        await submit(js, subjects, "plain-1")
        started = [await take(fetched, slots)]
        assert due_lane not in asked, asked
        monkeypatch.setattr(puller_mod, "DUE_ORDER_RECHECK_S", 0.0)  # the wait runs out
        await submit(js, subjects, "plain-2")
        started += [await take(fetched, slots) for _ in range(2)]
    finally:
        puller.stop()
        await asyncio.wait_for(task, WITHIN)
    assert job_ids(started) == ["plain-1", "due-1", "plain-2"]
    assert due_lane in asked


async def test_a_release_reaches_an_idle_node(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS
) -> None:
    """A node idle on a poll it would not end for an hour starts a released job: the release
    wakes it as a submit does."""
    slots = Slots({"cpu": 1})
    async with node(node_nc, subjects, slots) as (fetched, puller):
        # Idle after its first sweep, so listening: it subscribed before that sweep's requests.
        await asyncio.wait_for(puller.idle.wait(), WITHIN)
        await hold(js, subjects, "late", in_hours(1))
        assert await Releaser(js, None, subjects, Free(1)).tick() == 1
        assert job_ids([await take(fetched, slots)]) == ["late"]


async def test_a_held_submit_wakes_the_running_releaser(
    js: JetStreamContext, subjects: Subjects, nc: NATS
) -> None:
    """With a tick interval of an hour, only the held submit's wake-up can release the job."""
    released: asyncio.Queue[str] = asyncio.Queue()
    releaser = Releaser(
        js, nc, subjects, Free(5), interval=NEVER_POLL, on_release=released.put_nowait
    )
    # Held before it starts: its first tick releases it (and it listens from then on).
    await hold(js, subjects, "first", in_hours(1))
    stop = asyncio.Event()
    task = asyncio.create_task(releaser.run(stop))
    try:
        assert await wait_for(released.get(), "the first release") == "cpu"
        await hold(js, subjects, "second", in_hours(1))  # same connection: after its subscribe
        assert await wait_for(released.get(), "the woken release") == "cpu"
    finally:
        stop.set()
        await asyncio.wait_for(task, WITHIN)
    assert job_ids(await take_due(js, subjects, 2)) == ["first", "second"]


async def wait_for(aw: Awaitable[str], what: str) -> str:
    try:
        return await asyncio.wait_for(aw, WITHIN)
    except TimeoutError:
        pytest.fail(f"{what} never came")


async def test_a_node_without_due_lanes_still_pulls_the_pool(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS
) -> None:
    """A control plane of the release before makes no due lanes: a node of this release pulls
    the pool's other lanes instead of failing to bind."""
    for prio in ("high", "normal", "low"):
        await js.delete_consumer(subjects.jobs_stream, subjects.due_consumer("cpu", prio))
    await submit(js, subjects, "plain-1")
    slots = Slots({"cpu": 1})
    async with node(node_nc, subjects, slots) as (fetched, puller):
        assert job_ids([await take(fetched, slots)]) == ["plain-1"]
        assert puller._no_due


async def test_a_due_lane_whose_jobs_all_run_elsewhere_does_not_hold_up_the_plain_one(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS
) -> None:
    """Another node runs the only released job (delivered, not acked): the due lane has nothing
    to give, so a plain job starts first, not after the due lane's long-poll (an hour here)."""
    await hold(js, subjects, "running-elsewhere", in_hours(1))
    assert await Releaser(js, None, subjects, Free(1)).tick() == 1
    due = subjects.due_consumer("cpu", "normal")
    assert await first_start_while_out(js, subjects, node_nc, due, "plain-1") == "plain-1"


async def first_start_while_out(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS, out_of: str, job_id: str
) -> str:
    """Another node holds the one job of lane `out_of` (delivered, unacked); `job_id` (normal,
    no deadline) is submitted; the job a node whose long-polls last an hour starts first."""
    other = await js.pull_subscribe_bind(out_of, subjects.jobs_stream)
    try:
        (elsewhere,) = await other.fetch(1, timeout=WITHIN)
        await submit(js, subjects, job_id)
        slots = Slots({"cpu": 1})
        async with node(node_nc, subjects, slots, lane_wait=NEVER_POLL) as (fetched, _):
            (started,) = job_ids([await take(fetched, slots)])
        await elsewhere.ack_sync(timeout=5)
    finally:
        await other.unsubscribe()
    return started


async def test_a_backlog_larger_than_a_scan_is_read_whole_before_any_release(
    js: JetStreamContext, subjects: Subjects, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scans read a batch per tick; releasing from a part of the held jobs would pick the
    earliest of that part only. Here the earliest deadline is held last, behind two batches."""
    monkeypatch.setattr(release_mod, "SCAN_BATCH", 2)
    for hours in (5, 4, 3, 2, 1):
        await hold(js, subjects, f"h{hours}", in_hours(hours))
    releaser = Releaser(js, None, subjects, Free(0), margin=1)
    ticks = [await releaser.tick() for _ in range(3)]
    assert ticks == [0, 0, 1] and releaser.caught_up
    assert job_ids(await take_due(js, subjects, 1)) == ["h1"]
    assert await releaser.tick() == 1
    assert job_ids(await take_due(js, subjects, 1)) == ["h2"]


async def test_a_higher_tier_whose_jobs_all_run_elsewhere_does_not_hold_up_a_lower_one(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS
) -> None:
    """A `high` job runs on another node (delivered, not acked) and nothing else of `high`
    waits: a `normal` job starts at once, not after the `high` lane's long-poll (an hour here)."""
    await js.publish(
        subjects.submit(TENANT, "cpu", "high", "high-elsewhere"),
        encode(spec("high-elsewhere", None, "high")),
        headers={"Nats-Msg-Id": f"{TENANT}.high-elsewhere"}, stream=subjects.jobs_stream,
    )  # fmt: skip
    high = subjects.consumer("cpu", "high")
    assert await first_start_while_out(js, subjects, node_nc, high, "normal-1") == "normal-1"


async def test_aging_peeks_no_due_lane_per_start_in_a_pool_without_deadline_work(
    js: JetStreamContext, subjects: Subjects, node_nc: NATS, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Aging peeks the lower tiers after every start; with no deadline job seen lately it asks
    their due lanes once per DUE_RECHECK_S (here: never again after the first sweep), not two
    more consumer-info requests per start."""
    monkeypatch.setattr(puller_mod, "DUE_RECHECK_S", 1e9)
    slots = Slots({"cpu": 1})
    asked: list[str] = []
    at_start: list[int] = []
    node_js = node_nc.jetstream(timeout=5)
    info = node_js.consumer_info

    async def counted(stream: str, consumer: str, *args: Any, **kw: Any) -> Any:
        asked.append(consumer)
        return await info(stream, consumer, *args, **kw)

    def spawn(msg: Msg, _pool: str, _prio: str) -> None:
        at_start.append(len(asked))
        fetched.put_nowait((msg, HOLD.get()))

    fetched: Fetched = asyncio.Queue()
    puller = PoolPuller(node_js, subjects, "cpu", slots, spawn, fetch_timeout=NEVER_POLL,
                        tier_timeout=LANE_WAIT, wake_source=node_nc, aging_every=8)  # fmt: skip
    task = asyncio.create_task(puller.run())
    try:
        await asyncio.wait_for(puller.idle.wait(), WITHIN)  # every tier peeked once
        monkeypatch.setattr(node_js, "consumer_info", counted)
        for job_id in ("high-1", "high-2"):
            await js.publish(
                subjects.submit(TENANT, "cpu", "high", job_id), encode(spec(job_id, None, "high")),
                headers={"Nats-Msg-Id": f"{TENANT}.{job_id}"}, stream=subjects.jobs_stream,
            )  # fmt: skip
        started = [await take(fetched, slots) for _ in range(2)]
    finally:
        puller.stop()
        await asyncio.wait_for(task, WITHIN)
    assert job_ids(started) == ["high-1", "high-2"]
    between = asked[at_start[0] : at_start[1]]
    assert subjects.consumer("cpu", "normal") in between, between  # aging did peek
    for prio in ("normal", "low"):
        assert subjects.due_consumer("cpu", prio) not in between, between


async def test_a_wake_up_heard_before_the_job_is_stored_is_followed_up(
    js: JetStreamContext, subjects: Subjects
) -> None:
    """A held submit's wake-up often reaches the leader before the stream has stored the job:
    the kicked tick finds nothing, and looks again moments later, not an interval (an hour
    here) later."""
    released: asyncio.Queue[str] = asyncio.Queue()
    releaser = Releaser(
        js, None, subjects, Free(5), interval=NEVER_POLL, on_release=released.put_nowait
    )
    scan = releaser.scan
    stored_after: list[int] = []

    async def scan_then_store() -> int:
        found = await scan()
        if not stored_after:  # the store lands just after the first, kicked, scan
            stored_after.append(found)
            await hold(js, subjects, "stored-late", in_hours(1))
        return found

    releaser.scan = scan_then_store  # type: ignore[method-assign]
    releaser._kick.set()  # the wake-up, heard before the store
    stop = asyncio.Event()
    task = asyncio.create_task(releaser.run(stop))
    try:
        assert await wait_for(released.get(), "the follow-up release") == "cpu"
    finally:
        stop.set()
        await asyncio.wait_for(task, WITHIN)
    assert stored_after == [0]
    assert job_ids(await take_due(js, subjects, 1)) == ["stored-late"]
