"""Supervised side tasks: a crash is logged and restarted with back-off, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable

log = logging.getLogger("flotilla.control")
MAX_BACKOFF = 30.0
#: A run that lasted this long was healthy: it clears the count of crashes in a row.
HEALTHY_RUN = 60.0


class Supervisor:
    def __init__(self) -> None:
        #: name -> crashes in a row; the systemd watchdog stops being fed while ingest crash-loops.
        self.crashes: Counter[str] = Counter()

    async def supervise(
        self, name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Run `run` until stop, restarting it after a crash (0.5 s back-off, doubling)."""
        delay = 0.5
        while not stop.is_set():
            started = time.monotonic()
            try:
                await run()
                delay, self.crashes[name] = 0.5, 0
            except asyncio.CancelledError:
                raise
            except Exception:
                healthy = time.monotonic() - started >= HEALTHY_RUN
                self.crashes[name] = 1 + (0 if healthy else self.crashes[name])
                log.exception("%s crashed; restarting in %.1fs", name, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, MAX_BACKOFF)
