"""The jobs running on this node, by id, with what a cancel, pause or drain needs to reach them."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol


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
    started_at: float = field(default_factory=time.monotonic)


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
            job.paused_since = time.monotonic()
        else:
            job.control.resume()
            job.paused_since = None
        return True

    @staticmethod
    def _interrupt(job: RunningJob) -> None:
        # The control stops ffmpeg gracefully; cancelling the task is the backstop.
        if job.control is not None:
            job.control.cancel(job.stop_reason or "cancelled")
        if job.op_task is not None and not job.op_task.done():
            job.op_task.cancel()
