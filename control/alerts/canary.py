"""Synthetic canaries: a `canary` job per pool with online nodes; late ones raise canary_failed.

A canary takes a slot like any job, so in a pool busy with long jobs it waits its turn. That is
the pool working, not failing: a canary that no node has taken yet while no online node of the
pool had a free slot, at any tick since it was sent, is starved, not late, and waits on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field

import asyncpg
from nats.js import JetStreamContext

from control.nodes import Fleet
from schemas.codec import encode
from schemas.jobs import JobSpec, Requirements
from schemas.operations import Canary
from schemas.subjects import Subjects, job_msg_id

log = logging.getLogger("flotilla.canary")
#: The tenant canary jobs run under (retention keeps them a shorter time).
CANARY_TENANT = "canary"


@dataclass(slots=True)
class _Pending:
    job_id: str
    sent_at: float
    #: Some online node of the pool had a free slot (or did not say) since it was sent.
    had_room: bool = False


@dataclass(slots=True)
class CanaryRunner:
    js: JetStreamContext
    db: asyncpg.Pool
    subjects: Subjects
    pools: list[str]
    fleet: Fleet
    timeout: float
    interval: float
    pending: dict[str, _Pending] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    #: pool -> last submit-to-completed latency in seconds
    latency: dict[str, float] = field(default_factory=dict)

    def reset(self) -> None:
        """Forget canaries in flight: a new leader term starts from scratch."""
        self.pending.clear()
        self.failed.clear()

    def failed_pools(self) -> tuple[str, ...]:
        return tuple(sorted(self.failed))

    async def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.fleet.synced:
            for pool, p in self.pending.items():
                p.had_room = p.had_room or self._has_room(pool, now)
        for pool, p in list(self.pending.items()):
            state = await self.db.fetchval(
                "SELECT state FROM jobs WHERE tenant = $1 AND job_id = $2", CANARY_TENANT, p.job_id
            )
            if state == "completed":
                self.latency[pool] = now - p.sent_at
                self.failed.discard(pool)
                del self.pending[pool]
            elif state in (None, "submitted") and not p.had_room and now - p.sent_at > self.timeout:
                log.info("canary %s waits for a free slot in pool %s", p.job_id, pool)
            elif state in ("failed", "cancelled") or now - p.sent_at > self.timeout:
                log.warning("canary %s in pool %s did not complete (%s)", p.job_id, pool, state)
                self.failed.add(pool)
                del self.pending[pool]
        if not self.fleet.synced:  # an empty fleet would clear failed pools
            return
        nodes = self.fleet.nodes(now)
        live = {p for n in nodes if n.state == "online" for p in n.capabilities.pools}
        self.failed &= live  # a pool with no online node is pool_offline's business
        for pool in self.pools:
            if pool in live and pool not in self.pending:
                job = JobSpec(
                    job_id=f"canary-{pool}-{secrets.token_hex(6)}",
                    tenant=CANARY_TENANT,
                    priority="high",
                    input="canary://",
                    operation=Canary(),
                    requirements=Requirements(pool=pool),
                    max_attempts=1,
                )
                subject = self.subjects.submit(job.tenant, pool, job.priority, job.job_id)
                msg_id = job_msg_id(job.tenant, job.job_id)
                await self.js.publish(subject, encode(job), headers={"Nats-Msg-Id": msg_id})
                self.pending[pool] = _Pending(job.job_id, now)

    def _has_room(self, pool: str, now: float) -> bool:
        for n in self.fleet.nodes(now):
            if n.state == "online" and pool in n.capabilities.pools:
                free = n.heartbeat.free_slots.get(pool)
                if free is None or free > 0:  # a node that does not say counts as room
                    return True
        return False

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:
                log.exception("canary tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
