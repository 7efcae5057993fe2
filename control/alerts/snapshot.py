"""Build the fleet snapshot the alert rules and metrics read: nodes from the node tracker, queues
from NATS, job figures from Postgres."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime

import asyncpg
from nats.js import JetStreamContext

from control.alerts.rules import NodeView, PoolView, Snapshot
from control.fleetread import ingest_backlog_age, pool_queue
from control.nodes import Fleet, FleetNode
from control.runtimes import OpenDeadline, lateness
from schemas.subjects import Subjects


def node_view(node: FleetNode) -> NodeView:
    caps, hb = node.capabilities, node.heartbeat
    free = hb.disk_free_bytes or caps.disk_free_bytes
    disk = 100.0 * (1.0 - free / caps.disk_total_bytes) if caps.disk_total_bytes else 0.0
    temps = tuple(g.temperature_c for g in hb.gpus if g.temperature_c is not None)
    return NodeView(
        node_id=caps.node_id,
        state=node.state,
        pools=tuple(caps.pools),
        disk_percent=disk,
        memory_percent=hb.memory_percent,
        gpu_temps_c=temps,
    )


async def fleet_snapshot(
    js: JetStreamContext,
    subjects: Subjects,
    pools: list[str],
    fleet: Fleet,
    canary_failed: tuple[str, ...] = (),
) -> Snapshot:
    if not fleet.synced:  # an empty fleet would fire false alerts
        raise RuntimeError("the node bucket has not been read yet")
    now = time.time()
    nodes = fleet.nodes(now)
    queues = [await pool_queue(js, subjects, p, now) for p in pools]
    return Snapshot(
        nodes=tuple(node_view(n) for n in nodes),
        pools=tuple(PoolView(q.pool, q.queued, q.oldest_wait_s) for q in queues),
        canary_failed=canary_failed,
        ingest_lag_s=await ingest_backlog_age(js, subjects, now),
    )


#: Unfinished jobs by state and pool: the partial index jobs_active_idx holds exactly these, so
#: the count reads the backlog, never the finished history.
ACTIVE_BY_STATE = """
SELECT state, pool, count(*) AS n FROM jobs
WHERE state IN ('submitted', 'queued', 'running') GROUP BY state, pool LIMIT 10000
"""
#: Finished jobs by state and pool over the last $1 seconds (jobs_finished_idx): a count of
#: every finished job would scan the whole table each interval, and grow with it.
FINISHED_BY_STATE = """
SELECT state, pool, count(*) AS n FROM jobs
WHERE finished_at > now() - make_interval(secs => $1)
  AND state IN ('completed', 'failed', 'cancelled')
GROUP BY state, pool LIMIT 10000
"""


async def with_db(
    snap: Snapshot, db: asyncpg.Pool, failure_window: float, rejected_window: float = 900.0
) -> Snapshot:
    """Add what only Postgres knows: job counts (unfinished ones all, finished ones over
    `failure_window`, which the failure rate reads too), idle running jobs, and the nodes whose
    events were rejected within `rejected_window`."""
    active = await db.fetch(ACTIVE_BY_STATE)
    finished = await db.fetch(FINISHED_BY_STATE, failure_window)
    idle = await db.fetch(
        "SELECT job_id, extract(epoch FROM now() - coalesce(progress_at, started_at, updated_at))"
        " AS idle FROM jobs WHERE state = 'running' LIMIT 10000"
    )
    rejected = await db.fetch(
        "SELECT node_id, count(*) AS n FROM rejected_events"
        " WHERE received_at > now() - make_interval(secs => $1)"
        " GROUP BY node_id ORDER BY node_id LIMIT 1000",
        rejected_window,
    )
    return replace(
        snap,
        rejected_by_node={r["node_id"]: int(r["n"]) for r in rejected},
        jobs={(r["state"], r["pool"]): int(r["n"]) for r in (*active, *finished)},
        finished_in_window=sum(int(r["n"]) for r in finished),
        failed_in_window=sum(int(r["n"]) for r in finished if r["state"] == "failed"),
        running_idle_s={r["job_id"]: float(r["idle"]) for r in idle},
    )


async def finished_since(
    db: asyncpg.Pool, since: datetime, limit: int = 10_000
) -> tuple[list[tuple[float | None, float | None]], datetime]:
    """(run time, queue wait) of jobs finished after `since`, and the new high-water mark."""
    rows = await db.fetch(
        "SELECT finished_at, extract(epoch FROM finished_at - started_at) AS run_s,"
        " extract(epoch FROM started_at - submitted_at) AS wait_s FROM jobs"
        " WHERE finished_at > $1 ORDER BY finished_at LIMIT $2",
        since,
        limit,
    )
    mark = rows[-1]["finished_at"] if rows else since
    out = [
        (None if r["run_s"] is None else float(r["run_s"]),
         None if r["wait_s"] is None else float(r["wait_s"]))
        for r in rows
    ]  # fmt: skip
    return out, mark


#: Unfinished jobs with a deadline (jobs_deadline_idx), soonest first.
OPEN_DEADLINES = """
SELECT tenant, job_id, state, extract(epoch FROM deadline) AS deadline,
       extract(epoch FROM started_at) AS started_at, estimated_run_s
FROM jobs
WHERE deadline IS NOT NULL AND state IN ('submitted', 'queued', 'running')
ORDER BY deadline LIMIT $1
"""


async def with_deadlines(
    snap: Snapshot, db: asyncpg.Pool, now: float | None = None, limit: int = 10_000
) -> Snapshot:
    """Add the unfinished jobs whose deadline passed or whose estimated finish is past it
    (the leader's check: `deadline_at_risk`). `now`: epoch seconds, injectable for tests."""
    now = time.time() if now is None else now
    rows = await db.fetch(OPEN_DEADLINES, limit)
    risky: dict[str, float] = {}
    missed: set[str] = set()
    for r in rows:
        job = OpenDeadline(
            subject=f"{r['tenant']}/{r['job_id']}", deadline=float(r["deadline"]), state=r["state"],
            started_at=None if r["started_at"] is None else float(r["started_at"]),
            estimated_run_s=r["estimated_run_s"],
        )  # fmt: skip
        late = lateness(job, now)
        if late is not None:
            risky[job.subject] = late
            if now >= job.deadline:
                missed.add(job.subject)
    return replace(snap, deadlines_at_risk=risky, deadlines_missed=frozenset(missed))
