"""Supervised long-lived tasks: a crash is logged with its traceback, then the task is restarted
with bounded back-off or, where a fresh run cannot be right, reported to the owner as fatal.

Each task names its policy (`Policy`): the control plane restarts everything for ever; the daemon
gives up on a task that keeps crashing and exits, for systemd to restart it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("flotilla.supervise")
MAX_BACKOFF = 30.0
#: A run that lasted this long was healthy: it clears the count of crashes in a row.
HEALTHY_RUN = 60.0


@dataclass(frozen=True)
class Policy:
    #: Run again after a crash (or a return before stop); False: one run, and a crash is fatal.
    restart: bool = True
    first_delay: float = 0.5
    max_delay: float = MAX_BACKOFF
    #: Crashes in a row (no healthy run between) after which a crash is fatal; None: never.
    give_up_after: int | None = None


RESTART = Policy()
FATAL = Policy(restart=False)

#: Told (task name, exception) when a task crashed and will not be restarted.
OnFatal = Callable[[str, BaseException], None]


class Supervisor:
    def __init__(self, on_fatal: OnFatal | None = None) -> None:
        #: name -> crashes in a row; the systemd watchdog stops being fed while ingest crash-loops.
        self.crashes: Counter[str] = Counter()
        #: name -> restarts after a crash, ever.
        self.restarts: Counter[str] = Counter()
        self.on_fatal = on_fatal

    async def supervise(
        self,
        name: str,
        run: Callable[[], Awaitable[None]],
        stop: asyncio.Event,
        policy: Policy = RESTART,
    ) -> None:
        """Run `run` until `stop` is set, as `policy` says; returns once it is done with it."""
        delay = policy.first_delay
        while not stop.is_set():
            started = time.monotonic()
            try:
                await run()
                if not policy.restart:
                    return
                delay, self.crashes[name] = policy.first_delay, 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if stop.is_set():  # stopping anyway: nothing to restart, nobody to tell
                    log.warning("%s failed while stopping: %s", name, exc)
                    return
                healthy = time.monotonic() - started >= HEALTHY_RUN
                crashes = self.crashes[name] = 1 + (0 if healthy else self.crashes[name])
                limit = policy.give_up_after
                if not policy.restart or (limit is not None and crashes >= limit):
                    log.exception("%s crashed (%d in a row); not restarting it", name, crashes)
                    self._fatal(name, exc)
                    return
                self.restarts[name] += 1
                log.exception("%s crashed; restarting in %.1fs", name, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, policy.max_delay)

    def adopt(self, name: str, task: asyncio.Task[None], stop: asyncio.Event) -> None:
        """Watch a task started elsewhere, which cannot be restarted from here: a crash before
        `stop` is fatal."""

        def done(task: asyncio.Task[None]) -> None:
            if task.cancelled() or stop.is_set() or (exc := task.exception()) is None:
                return
            log.error("%s crashed", name, exc_info=exc)
            self._fatal(name, exc)

        task.add_done_callback(done)

    def _fatal(self, name: str, exc: BaseException) -> None:
        if self.on_fatal is not None:
            self.on_fatal(name, exc)
