"""Slot accounting: reserve before fetch, release what was not filled, never over capacity."""

from __future__ import annotations

import asyncio

import pytest

from daemon.pull.slots import SlotError, Slots


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
