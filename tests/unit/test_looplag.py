"""The loop-lag watcher sees a loop held up by a blocking call."""

from __future__ import annotations

import asyncio
import gc
import time

from common.looplag import watch_loop_lag


async def test_a_blocked_loop_is_seen_late() -> None:
    seen: list[float] = []
    stop = asyncio.Event()
    task = asyncio.create_task(watch_loop_lag(seen.append, stop, interval=0.05))
    for _ in range(200):  # bounded: the watcher's first sample
        if seen:
            break
        await asyncio.sleep(0.01)
    # Held for 0.3 s: the timer due 0.05 s after its sleep began wakes at least 0.25 s late,
    # however fast the machine (a slower one only makes it later).
    time.sleep(0.3)  # noqa: ASYNC251 -- the blocking call under test
    count = len(seen)
    for _ in range(200):
        if len(seen) > count:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seen and all(s >= 0 for s in seen)
    assert max(seen[count:]) >= 0.25


async def test_collector_passes_are_timed_while_watched() -> None:
    passes: list[tuple[int, float]] = []
    stop = asyncio.Event()
    task = asyncio.create_task(
        watch_loop_lag(
            lambda _: None, stop, interval=0.01, gc_observe=lambda g, s: passes.append((g, s))
        )
    )
    await asyncio.sleep(0.05)
    gc.collect()
    assert (2, passes[-1][1]) == passes[-1] and passes[-1][1] >= 0
    stop.set()
    await asyncio.wait_for(task, 5)
    count = len(passes)
    gc.collect()  # the watcher is gone: no longer timed
    assert len(passes) == count
