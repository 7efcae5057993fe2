"""The jobs running on this node, by (tenant, job id): what a cancel, pause, drain or heartbeat
reaches. Two tenants may use one job id, and both may run here at once."""

from __future__ import annotations

from daemon.job.handle import JobHandle, StopKind

Key = tuple[str, str]  # (tenant, job_id)


class RunningJobs:
    def __init__(self) -> None:
        self._jobs: dict[Key, JobHandle] = {}

    def add(self, handle: JobHandle) -> None:
        self._jobs[(handle.tenant, handle.job_id)] = handle

    def remove(self, handle: JobHandle) -> None:
        """Forget `handle`; a newer attempt of the same job registered since stays."""
        key = (handle.tenant, handle.job_id)
        if self._jobs.get(key) is handle:
            del self._jobs[key]

    def matching(self, job_id: str, tenant: str | None = None) -> list[JobHandle]:
        """The jobs of this id: the tenant's one, or (tenant None) every tenant's."""
        if tenant is not None:
            handle = self._jobs.get((tenant, job_id))
            return [] if handle is None else [handle]
        return [h for (_, j), h in sorted(self._jobs.items()) if j == job_id]

    def get(self, job_id: str, tenant: str | None = None) -> JobHandle | None:
        """The one job of this id (and tenant, if given); None if none or several."""
        found = self.matching(job_id, tenant)
        return found[0] if len(found) == 1 else None

    def keys(self) -> list[Key]:
        """(tenant, job_id) of each running job, by job id then tenant."""
        return sorted(self._jobs, key=lambda k: (k[1], k[0]))

    def ids(self) -> list[str]:
        """The running jobs' ids, in the order of `tenants()`."""
        return [job_id for _, job_id in self.keys()]

    def tenants(self) -> list[str]:
        """The tenant of each of `ids()`, same order."""
        return [tenant for tenant, _ in self.keys()]

    def __len__(self) -> int:
        return len(self._jobs)

    def cancel(self, job_id: str, reason: str, tenant: str | None = None) -> bool:
        handle = self.get(job_id, tenant)
        if handle is None:
            return False
        handle.cancel(reason)
        return True

    def pause(self, job_id: str, paused: bool, tenant: str | None = None) -> bool:
        handle = self.get(job_id, tenant)
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
