"""The handle the pull loop holds for one running job: cancel, pause, resume, hard deadline.

An operation may run several ffmpeg processes in sequence (two passes, a probe, then the encode);
whichever runs now is attached here, so a request always reaches the current one. Signals go to
the process group (ffmpeg starts in its own session), so ffmpeg and any helper it spawned get them,
and nothing else. Paused time does not count against the hard timeout: an operator who pauses a
job did not ask for it to time out (the job's watcher resumes a pause past `pause_limit`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from typing import Any

from daemon.errors import JobCancelled, JobTimeout
from daemon.ffmpeg.proc import signal_group


class RunControl:
    def __init__(self, *, grace_s: float = 10.0) -> None:
        #: How long a graceful stop (SIGINT) may take before SIGKILL.
        self.grace_s = grace_s
        self.cancel_reason: str | None = None
        self.paused_total_s = 0.0
        self._hard_s: float | None = None
        self._deadline: float | None = None
        self._paused_at: float | None = None
        self._pid: int | None = None
        self._wake = asyncio.Event()

    # -- requests (from the pull loop; plain methods, safe to call at any time) -----------------

    def cancel(self, reason: str = "cancelled") -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self._notify()

    def pause(self) -> None:
        """Stop the current ffmpeg (SIGSTOP) and hold the next one; idempotent."""
        if self._paused_at is not None:
            return
        self._paused_at = time.monotonic()
        self._signal(signal.SIGSTOP)
        self._notify()

    def resume(self) -> None:
        if self._paused_at is None:
            return
        held = time.monotonic() - self._paused_at
        self.paused_total_s += held
        if self._deadline is not None:
            self._deadline += held
        self._paused_at = None
        self._signal(signal.SIGCONT)
        self._notify()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    @property
    def pid(self) -> int | None:
        """The ffmpeg running now (its process group id too), None between runs."""
        return self._pid

    # -- deadline -------------------------------------------------------------------------------

    def arm(self, hard_seconds: float) -> None:
        """Start the hard-timeout clock (once per job; later calls keep the first deadline)."""
        if self._deadline is None:
            self._hard_s = hard_seconds
            self._deadline = time.monotonic() + hard_seconds

    def remaining(self) -> float | None:
        """Seconds until the hard timeout; None when unarmed or paused (the clock stands still)."""
        if self._deadline is None or self._paused_at is not None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def timeout_error(self) -> JobTimeout:
        return JobTimeout(f"hard timeout of {self._hard_s:g} s reached")

    def check(self) -> None:
        """Raise if the job was cancelled or ran out of time: operations call it between steps."""
        if self.cancel_reason is not None:
            raise JobCancelled(self.cancel_reason)
        if self.remaining() == 0.0:
            raise self.timeout_error()

    async def ready(self) -> None:
        """Return when the next step may start: not paused, not cancelled, not out of time."""
        for _ in range(1_000_000):
            self.check()
            if not self.paused:
                return
            await self.changed()

    async def sleep(self, seconds: float) -> None:
        """Sleep that honours cancel, pause (the sleep stands still) and the hard deadline."""
        left = seconds
        while left > 0:
            await self.ready()
            limit = self.remaining()
            step = left if limit is None else min(left, limit)
            start = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed(), timeout=step)
            left -= time.monotonic() - start
        self.check()

    # -- the runner's side ----------------------------------------------------------------------

    def changed(self) -> Coroutine[Any, Any, bool]:
        """Wait for the next cancel/pause/resume after this call.

        Not `async def`: the event is taken now, so a change that happens before the returned
        coroutine first runs still wakes it.
        """
        return self._wake.wait()

    def attach(self, pid: int) -> None:
        self._pid = pid
        if self.paused:
            self._signal(signal.SIGSTOP)

    def detach(self) -> None:
        self._pid = None

    def _signal(self, sig: signal.Signals) -> None:
        if self._pid is not None:
            signal_group(self._pid, sig)

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next change.
        self._wake.set()
        self._wake = asyncio.Event()
