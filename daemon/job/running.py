"""The jobs running on this node, by id: what a cancel, pause, drain or heartbeat reaches."""

from __future__ import annotations

from daemon.job.handle import JobHandle, StopKind


class RunningJobs:
    def __init__(self) -> None:
        self._jobs: dict[str, JobHandle] = {}

    def add(self, handle: JobHandle) -> None:
        self._jobs[handle.job_id] = handle

    def remove(self, handle: JobHandle) -> None:
        """Forget `handle`; a newer attempt of the same job registered since stays."""
        if self._jobs.get(handle.job_id) is handle:
            del self._jobs[handle.job_id]

    def get(self, job_id: str) -> JobHandle | None:
        return self._jobs.get(job_id)

    def ids(self) -> list[str]:
        return sorted(self._jobs)

    def __len__(self) -> int:
        return len(self._jobs)

    def cancel(self, job_id: str, reason: str) -> bool:
        handle = self._jobs.get(job_id)
        if handle is None:
            return False
        handle.cancel(reason)
        return True

    def pause(self, job_id: str, paused: bool) -> bool:
        handle = self._jobs.get(job_id)
        if handle is None:
            return False
        if paused:
            handle.pause()
        else:
            handle.resume()
        return True

    def stop_all(self, kind: StopKind, reason: str) -> int:
        """Drain deadline or forced stop: stop every job (JetStream redelivers it elsewhere)."""
        for handle in self._jobs.values():
            handle.stop(kind, reason)
        return len(self._jobs)
