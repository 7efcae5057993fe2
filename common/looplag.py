"""How late an event loop runs: a timer's overshoot, sampled at a fixed interval.

A loop that a long callback (a big decode, a blocking call) holds up delays every task on it;
the overshoot of a short sleep measures that from the inside, at the cost of one timer per
interval.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL_S = 0.1


async def watch_loop_lag(
    observe: Callable[[float], None], stop: asyncio.Event, interval: float = INTERVAL_S
) -> None:
    """Observe each sleep's lateness (seconds) until `stop` is set."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, loop.time() - due))
