"""Slot accounting: reserve before fetch, release what was not filled, never over capacity."""

from __future__ import annotations

import asyncio

import pytest

from daemon.pull.slots import (
    HOLD,
    SETTLING_PER_SLOT,
    Hold,
    SlotError,
    Slots,
    hand_over_slot,
)


def test_reserve_takes_free_and_full_pool_gets_zero() -> None:
    slots = Slots({"cpu": 2, "nvenc": 0})
    assert slots.reserve("cpu") == 2
    assert slots.reserve("cpu") == 0
    assert slots.reserve("nvenc") == 0
    assert slots.reserve("unknown") == 0
    slots.release("cpu", 2)
    assert slots.free("cpu") == 2


def test_reserve_then_release_unfilled() -> None:
    slots = Slots({"cpu": 4})
    k = slots.reserve("cpu")
    got = 1  # the fetch returned one message for four reserved slots
    slots.release("cpu", k - got)
    assert slots.used("cpu") == 1
    assert slots.free_all() == {"cpu": 3}


def test_over_release_is_an_error() -> None:
    slots = Slots({"cpu": 1})
    with pytest.raises(SlotError):
        slots.release("cpu", 1)


def test_resize_keeps_running_jobs() -> None:
    slots = Slots({"cpu": 3})
    slots.reserve("cpu", 2)
    slots.resize({"cpu": 1, "qsv": 1})
    assert slots.free("cpu") == 0
    assert slots.free("qsv") == 1
    slots.release("cpu", 2)
    assert slots.free("cpu") == 1


async def test_wait_free_wakes_on_release() -> None:
    slots = Slots({"cpu": 1})
    slots.reserve("cpu")
    assert not await slots.wait_free("cpu", 0.05)
    waiter = asyncio.create_task(slots.wait_free("cpu", 5.0))
    await asyncio.sleep(0)
    slots.release("cpu")
    assert await waiter


def test_messages_over_the_reservation_take_slots_over_capacity() -> None:
    slots = Slots({"cpu": 2})
    assert slots.reserve("cpu") == 2
    slots.take("cpu", 1)  # a fetch returned a third message, left queued by an earlier pull
    assert slots.used("cpu") == 3 and slots.free("cpu") == 0
    slots.release("cpu")
    assert slots.free("cpu") == 0  # one ended, still full: the pool fetches nothing yet
    slots.release("cpu", 2)
    assert slots.free("cpu") == 2


async def _job(slots: Slots, settle: asyncio.Event, handed: list[bool]) -> None:
    """What a job's task does with its slot: hand it over when its operation ends, then
    release at its very end (as the daemon's job wrapper does, whatever happened)."""
    try:
        handed.append(hand_over_slot())
        await settle.wait()
    finally:
        slots.release("cpu")


async def _spawn(slots: Slots, settle: asyncio.Event, handed: list[bool]) -> asyncio.Task[None]:
    assert slots.reserve("cpu", 1) == 1
    token = HOLD.set(Hold(slots, "cpu"))  # as the puller does around its spawn
    try:
        return asyncio.create_task(_job(slots, settle, handed))
    finally:
        HOLD.reset(token)


async def test_a_settling_job_hands_its_slot_over_up_to_its_bound() -> None:
    slots = Slots({"cpu": 1})
    bound = SETTLING_PER_SLOT
    settle, handed = asyncio.Event(), list[bool]()
    tasks = []
    for _ in range(bound):
        tasks.append(await _spawn(slots, settle, handed))
        await asyncio.sleep(0)  # its operation ends at once
    assert handed == [True] * bound  # each operation ended: its slot is free for a new job
    assert slots.free("cpu") == 1 and slots.settling("cpu") == bound
    tasks.append(await _spawn(slots, settle, handed))
    await asyncio.sleep(0)
    # The bound is reached: this one keeps its slot, so the messages held stay bounded.
    assert handed == [True] * bound + [False]
    assert slots.free("cpu") == 0 and slots.settling("cpu") == bound
    settle.set()
    await asyncio.gather(*tasks)
    assert slots.used("cpu") == 0 and slots.settling("cpu") == 0 and slots.free("cpu") == 1


async def test_release_outside_a_job_is_plain() -> None:
    slots = Slots({"cpu": 1})
    assert not hand_over_slot()  # no job's slot in this context
    slots.reserve("cpu")
    slots.release("cpu")
    assert slots.free("cpu") == 1 and slots.settling("cpu") == 0
