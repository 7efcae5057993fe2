"""One running attempt of a job, as the daemon holds it: who it is, one pause clock, one stop.

Whoever acts on a running job goes through its handle: the control listener (cancel, pause), the
drain (stop), the watcher (in-progress acks, pause limit, soft timeout), the runner (hard timeout)
and ffmpeg itself. An operation may run several ffmpeg processes in sequence (two passes, a probe,
then the encode); whichever runs now is attached here, so a signal always reaches the current
one. Signals go to the process group (ffmpeg starts in its own session), so ffmpeg and any helper
it spawned get them, and nothing else.

Paused time is measured once, here, and counts toward no timeout (hard or soft): an operator who
pauses a job did not ask for it to time out. The pause limit is read off the same clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from daemon.errors import JobCancelled, JobTimeout
from daemon.ffmpeg.proc import signal_group
from daemon.ffmpeg.progress import ProgressUpdate


class StopKind(enum.IntEnum):
    """Why an attempt is stopped, weakest first: a stronger request replaces a weaker one."""

    #: The drain deadline passed: the job goes back to JetStream for another node.
    DRAIN = 1
    #: The node is forced down: handed back the same way.
    SHUTDOWN = 2
    #: The runner's backstop for an operation that outlived its hard timeout: a failed attempt.
    TIMEOUT = 3
    #: An operator or producer cancelled the job: it ends, even if it was being handed back.
    CANCEL = 4


@dataclass(frozen=True)
class Stop:
    kind: StopKind
    reason: str


class PauseClock:
    """Time a job spent paused: the pause in progress, if any, plus every finished one."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.finished = 0.0

    def pause(self, now: float) -> bool:
        """True if this starts a pause (a second pause changes nothing)."""
        if self.since is not None:
            return False
        self.since = now
        return True

    def resume(self, now: float) -> bool:
        """True if this ends a pause."""
        if self.since is None:
            return False
        self.finished += now - self.since
        self.since = None
        return True

    def total(self, now: float) -> float:
        return self.finished + (0.0 if self.since is None else now - self.since)


class JobHandle:
    def __init__(
        self,
        job_id: str,
        pool: str = "cpu",
        attempt: int = 1,
        *,
        tenant: str = "",
        grace_s: float = 10.0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.job_id, self.pool, self.attempt = job_id, pool, attempt
        #: Whose job: two tenants may use one job id, so (tenant, job_id) names it.
        self.tenant = tenant
        #: How long a graceful stop of ffmpeg (SIGINT) may take before SIGKILL.
        self.grace_s = grace_s
        #: The clock every timer of this job reads (the watcher's too).
        self.now = now
        self.started_at = now()
        self.clock = PauseClock()
        #: Past its soft timeout: every progress event says so from then on.
        self.slow = False
        #: The `started` event is recorded: a slow report before it waits for it (events in order).
        self.started = False
        #: The latest progress, repeated by the slow report (a bare one would blank the job's).
        self.last_progress: ProgressUpdate | None = None
        self._stop: Stop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._pid: int | None = None
        self._hard_s: float | None = None
        #: (monotonic time, paused total) when the hard-timeout clock started.
        self._armed: tuple[float, float] | None = None
        self._changed = asyncio.Event()

    # -- pause ------------------------------------------------------------------------------

    def pause(self) -> None:
        """Stop the current ffmpeg (SIGSTOP) and hold the next one; idempotent."""
        if self.clock.pause(self.now()):
            self._signal(signal.SIGSTOP)
            self._notify()

    def resume(self) -> None:
        if self.clock.resume(self.now()):
            self._signal(signal.SIGCONT)
            self._notify()

    @property
    def paused(self) -> bool:
        return self.clock.since is not None

    @property
    def paused_since(self) -> float | None:
        return self.clock.since

    @property
    def paused_total(self) -> float:
        """Seconds spent in finished pauses."""
        return self.clock.finished

    # The name the ffmpeg runner's callers know it by; the same clock.
    paused_total_s = paused_total

    def active_seconds(self, now: float | None = None) -> float:
        """Seconds since the job started, paused time excluded (what the soft timeout reads)."""
        now = self.now() if now is None else now
        return now - self.started_at - self.clock.total(now)

    # -- stop -------------------------------------------------------------------------------

    def stop(self, kind: StopKind, reason: str) -> None:
        """Stop the attempt: ffmpeg gracefully (the runner sees the request), the operation's task
        at once. The request is kept unless a stronger one is already (see StopKind)."""
        if self._stop is None or kind > self._stop.kind:
            self._stop = Stop(kind, reason)
            self._notify()
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def cancel(self, reason: str = "cancelled") -> None:
        self.stop(StopKind.CANCEL, reason or "cancelled")

    @property
    def stopped(self) -> Stop | None:
        return self._stop

    def run_in(self, task: asyncio.Task[Any]) -> None:
        """The operation's task: a stop request cancels it."""
        self._task = task

    # -- hard timeout -----------------------------------------------------------------------

    def arm(self, hard_seconds: float) -> None:
        """Start the hard-timeout clock (once per job; later calls keep the first deadline)."""
        if self._armed is None:
            now = self.now()
            self._hard_s, self._armed = hard_seconds, (now, self.clock.total(now))

    def remaining(self) -> float | None:
        """Seconds until the hard timeout; None when unarmed or paused (the clock stands still)."""
        if self._armed is None or self._hard_s is None or self.paused:
            return None
        now = self.now()
        since, paused_then = self._armed
        active = now - since - (self.clock.total(now) - paused_then)
        return max(0.0, self._hard_s - active)

    def timeout_error(self) -> JobTimeout:
        return JobTimeout(f"hard timeout of {self._hard_s:g} s reached")

    def check(self) -> None:
        """Raise if the job was stopped or ran out of time: operations call it between steps."""
        if self._stop is not None:
            raise JobCancelled(self._stop.reason)
        if self.remaining() == 0.0:
            raise self.timeout_error()

    async def ready(self) -> None:
        """Return when the next step may start: not paused, not stopped, not out of time."""
        for _ in range(1_000_000):
            self.check()
            if not self.paused:
                return
            await self.changed()

    async def sleep(self, seconds: float) -> None:
        """Sleep that honours stop, pause (the sleep stands still) and the hard deadline."""
        left = seconds
        while left > 0:
            await self.ready()
            limit = self.remaining()
            start = self.now()
            await self.wait_changed(left if limit is None else min(left, limit))
            left -= self.now() - start
        self.check()

    # -- changes ----------------------------------------------------------------------------

    def changed(self) -> Coroutine[Any, Any, bool]:
        """Wait for the next stop, pause or resume after this call.

        Not `async def`: the event is taken now, so a change that happens before the returned
        coroutine first runs still wakes it.
        """
        return self._changed.wait()

    async def wait_changed(self, within: float) -> None:
        """Sleep up to `within` seconds, less if the job is stopped, paused or resumed."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.changed(), max(0.0, within))

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    # -- the ffmpeg running now -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The ffmpeg running now (its process group id too), None between runs."""
        return self._pid

    def attach(self, pid: int) -> None:
        self._pid = pid
        if self.paused:
            self._signal(signal.SIGSTOP)

    def detach(self) -> None:
        self._pid = None

    def _signal(self, sig: signal.Signals) -> None:
        if self._pid is not None:
            signal_group(self._pid, sig)
