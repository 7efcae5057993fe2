"""How late an event loop runs: a timer's overshoot, sampled at a fixed interval.

A loop that a long callback (a big decode, a blocking call) holds up delays every task on it;
the overshoot of a short sleep measures that from the inside, at the cost of one timer per
interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable

INTERVAL_S = 0.1


async def watch_loop_lag(
    observe: Callable[[float], None],
    stop: asyncio.Event,
    interval: float = INTERVAL_S,
    gc_observe: Callable[[int, float], None] | None = None,
) -> None:
    """Observe each sleep's lateness (seconds) until `stop` is set; with `gc_observe`, also the
    collector's passes (generation, seconds) meanwhile."""
    loop = asyncio.get_running_loop()
    pauses = None if gc_observe is None else GcPauses(gc_observe)
    if pauses is not None:
        pauses.install()
    try:
        while not stop.is_set():
            due = loop.time() + interval
            await asyncio.sleep(interval)
            observe(max(0.0, loop.time() - due))
    finally:
        if pauses is not None:
            pauses.remove()


class GcPauses:
    """Times the garbage collector's passes (each holds the loop for its whole length), by
    generation, through `gc.callbacks`; `install` and `remove` bracket its life."""

    def __init__(self, observe: Callable[[int, float], None]) -> None:
        self.observe = observe
        self._began = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.observe(info["generation"], time.perf_counter() - self._began)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)
