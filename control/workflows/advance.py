"""The leader's workflow loop: reconcile every workflow that has anything left to do.

Triggered by step jobs ending (the live updates ingest publishes after each commit), by a new
workflow (the API's kick) and by a periodic sweep, which alone suffices after a restart or a
failover: the state is all in Postgres. Each workflow is reconciled in one transaction holding
its row lock: a step is marked submitted, published (with its job's Nats-Msg-Id) and recorded
as a job before the commit, so a crash in between leaves the step waiting and the next leader
publishes it again, which the stream drops as a duplicate; a step whose job was recorded
(by ingest) while its mark was lost is adopted, never published again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from control.api.publish import Limits, over_limits, publish_job, record
from control.workflows import store
from control.workflows.plan import Plan, StepChange, plan
from schemas.subjects import Subjects
from schemas.workflows import SEPARATOR

log = logging.getLogger("flotilla.workflows")
#: Workflows one sweep reconciles at most; the rest wait for the next one.
SWEEP_LIMIT = 1000


@dataclass(slots=True)
class AdvanceStats:
    sweeps: int = 0
    published: int = 0
    #: Steps held back by their tenant's submit rate or queue limit (retried next sweep).
    deferred: int = 0


#: Told ("step", "published" | "deferred") and ("workflow", its end state): the metrics.
Observer = Callable[[str, str], None]


class Advancer:
    def __init__(
        self, nc: NATS, db: asyncpg.Pool, subjects: Subjects, interval: float, limits: Limits,
        observe: Observer = lambda kind, outcome: None,
    ) -> None:  # fmt: skip
        self.nc, self.js, self.db, self.subjects = nc, nc.jetstream(), db, subjects
        self.interval, self.limits = interval, limits
        self.stats = AdvanceStats()
        self._observe = observe
        self._kick = asyncio.Event()

    def kick(self) -> None:
        self._kick.set()

    async def _on_update(self, msg: Msg) -> None:
        # `<prefix>.updates.<tenant>.<job_id>.<kind>`: only step jobs concern us.
        if SEPARATOR in msg.subject.rsplit(".", 2)[-2]:
            self._kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        subs = [
            await self.nc.subscribe(self.subjects.job_updates("*", "*", kind), cb=self._on_update)
            for kind in ("completed", "failed", "cancelled")
        ]
        subs.append(await self.nc.subscribe(self.subjects.workflow_kick, cb=self._wake))
        try:
            while not stop.is_set():
                self._kick.clear()
                await self.sweep()
                waits = [asyncio.ensure_future(e.wait()) for e in (self._kick, stop)]
                try:
                    await asyncio.wait(waits, timeout=self.interval, return_when="FIRST_COMPLETED")
                finally:
                    for w in waits:
                        w.cancel()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _wake(self, msg: Msg) -> None:
        self._kick.set()

    async def sweep(self) -> int:
        """Reconcile every pending workflow once; returns how many."""
        self.stats.sweeps += 1
        found = await store.pending(self.db, SWEEP_LIMIT)
        for tenant, workflow_id in found:
            try:
                await self.reconcile(tenant, workflow_id)
            except (asyncpg.PostgresError, OSError, TimeoutError, NatsError) as exc:
                # Not this workflow's fault: the next trigger or sweep tries again.
                log.warning("workflow %s/%s not advanced: %r", tenant, workflow_id, exc)
        return len(found)

    async def reconcile(self, tenant: str, workflow_id: str) -> Plan | None:
        async with self.db.acquire() as conn, conn.transaction():
            state = await store.lock(conn, tenant, workflow_id)
            if state is None:
                return None
            rows = await store.steps(conn, tenant, workflow_id)
            decided = plan(state, [r.view for r in rows])  # type: ignore[arg-type]
            await store.change_steps(conn, tenant, workflow_id, decided.changes)
            if decided.workflow is not None:
                await store.end(conn, tenant, workflow_id, decided.workflow, decided.error)
                self._observe("workflow", decided.workflow)
                log.info("workflow %s/%s %s", tenant, workflow_id, decided.workflow)
            by_name = {r.view.name: r for r in rows}
            # In job id order, as ingest locks job rows: the two never wait on each other crosswise.
            for name in sorted(decided.submit, key=lambda n: by_name[n].job_id):
                job = store.job_of(by_name[name])
                refused = await over_limits(self.db, tenant, self.limits)
                if refused is not None:
                    self.stats.deferred += 1
                    self._observe("step", "deferred")
                    log.info("workflow %s step %s waits: %s", workflow_id, name, refused)
                    continue
                await store.change_steps(conn, tenant, workflow_id, {name: StepChange("submitted")})
                ack = await publish_job(self.js, self.subjects, job)
                await record(conn, job, ack)
                self.stats.published += 1
                self._observe("step", "published")
                log.info("workflow %s/%s submitted step %s as %s%s", tenant, workflow_id, name,
                         job.job_id, " (duplicate)" if ack.duplicate else "")  # fmt: skip
            return decided
