"""The jobs running on this node, by id, with what a cancel, pause or drain needs to reach them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from daemon.ffmpeg.progress import ProgressUpdate


class RunControlPort(Protocol):
    """The operation's control surface (`daemon/ops/context.py` RunControl)."""

    def cancel(self, reason: str = ...) -> None: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...


@dataclass
class RunningJob:
    job_id: str
    pool: str
    op_task: asyncio.Task[Any] | None = None
    control: RunControlPort | None = None
    #: Set before the op task is cancelled; with cancel_requested it ends the job, else hands back.
    stop_reason: str | None = None
    cancel_requested: bool = False
    paused_since: float | None = None
    #: Seconds spent in earlier, finished pauses: paused time counts toward no timeout.
    paused_total: float = 0.0
    #: Past its soft timeout: every progress event says so from then on.
    slow: bool = False
    #: The `started` event is recorded: a slow report before it waits for it (events in order).
    started: bool = False
    #: The latest progress, repeated by the slow report (a bare one would blank the job's).
    last_progress: ProgressUpdate | None = None
    started_at: float = field(default_factory=time.monotonic)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def active_seconds(self, now: float) -> float:
        """Wall time since start, paused time excluded."""
        paused = self.paused_total + (0.0 if self.paused_since is None else now - self.paused_since)
        return now - self.started_at - paused

    def notify(self) -> None:
        """Wake the job's watcher (a pause or resume changes its next deadline)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(self, within: float) -> None:
        """Sleep up to `within` seconds, less if `notify` is called meanwhile."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, within))


class RunningJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, RunningJob] = {}

    def add(self, job: RunningJob) -> None:
        self._jobs[job.job_id] = job

    def remove(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def get(self, job_id: str) -> RunningJob | None:
        return self._jobs.get(job_id)

    def ids(self) -> list[str]:
        return sorted(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def cancel(self, job_id: str, reason: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel_requested = True
        job.stop_reason = reason or "cancelled"
        self._interrupt(job)
        return True

    def stop_all(self, reason: str) -> int:
        """Drain deadline: stop every job and let JetStream redeliver it elsewhere."""
        for job in self._jobs.values():
            job.stop_reason = reason
            self._interrupt(job)
        return len(self._jobs)

    def pause(self, job_id: str, paused: bool) -> bool:
        job = self._jobs.get(job_id)
        if job is None or job.control is None:
            return False
        if paused:
            job.control.pause()
            if job.paused_since is None:
                job.paused_since = time.monotonic()
        else:
            job.control.resume()
            if job.paused_since is not None:
                job.paused_total += time.monotonic() - job.paused_since
            job.paused_since = None
        job.notify()
        return True

    @staticmethod
    def _interrupt(job: RunningJob) -> None:
        # The control stops ffmpeg gracefully; cancelling the task is the backstop.
        if job.control is not None:
            job.control.cancel(job.stop_reason or "cancelled")
        if job.op_task is not None and not job.op_task.done():
            job.op_task.cancel()
