"""After the run: what Postgres holds of this run's jobs, and the figures read from it.

- lost: a job the API confirmed that Postgres does not hold as terminal and that is no longer in
  the jobs stream; stuck: not terminal and still in the stream (queued or running);
- duplicated: a job with two or more distinct `completed` events (it ran to the end twice);
- dispatch latency: from the driver sending the submit to the job's first `started` event;
- ingest lag: `ingested_at - ts` of every event of the run (both clocks are this machine's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class JobAudit:
    submitted: int = 0
    confirmed: int = 0
    rows: int = 0
    states: dict[str, int] = field(default_factory=dict)
    completed: int = 0
    lost: int = 0
    stuck: int = 0
    duplicated: int = 0
    redelivered: int = 0
    events: int = 0
    events_by_kind: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, what: str, job_id: str) -> None:
        bucket = self.examples.setdefault(what, [])
        if len(bucket) < 5:
            bucket.append(job_id)


async def terminal_count(conn: asyncpg.Connection, tenant: str, prefix: str) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM jobs WHERE tenant = $1 AND job_id LIKE $2 AND state = ANY($3)",
        tenant, prefix + "%", list(TERMINAL),
    ))  # fmt: skip


async def audit_jobs(
    conn: asyncpg.Connection, tenant: str, prefix: str, confirmed: set[str], queued: set[str]
) -> tuple[JobAudit, dict[str, float]]:
    """The audit, and each job's first `started` time (epoch seconds)."""
    a = JobAudit(confirmed=len(confirmed))
    rows = await conn.fetch(
        "SELECT job_id, state FROM jobs WHERE tenant = $1 AND job_id LIKE $2", tenant, prefix + "%"
    )
    state = {r["job_id"]: r["state"] for r in rows}
    a.rows = len(rows)
    for s in state.values():
        a.states[s] = a.states.get(s, 0) + 1
    ev = await conn.fetch(
        """SELECT job_id,
                  count(*) FILTER (WHERE kind = 'completed') AS completed,
                  count(DISTINCT attempt) FILTER (WHERE kind = 'started') AS attempts,
                  min(ts) FILTER (WHERE kind = 'started') AS first_start
           FROM job_events WHERE tenant = $1 AND job_id LIKE $2 GROUP BY job_id""",
        tenant, prefix + "%",
    )  # fmt: skip
    first_start: dict[str, float] = {}
    for r in ev:
        if r["completed"] > 1:
            a.duplicated += 1
            a.note("duplicated", r["job_id"])
        if r["attempts"] > 1:
            a.redelivered += 1
        if r["first_start"] is not None:
            first_start[r["job_id"]] = r["first_start"].timestamp()
    kinds = await conn.fetch(
        "SELECT kind, count(*) AS n FROM job_events WHERE tenant = $1 AND job_id LIKE $2 "
        "GROUP BY kind", tenant, prefix + "%",
    )  # fmt: skip
    a.events_by_kind = {r["kind"]: r["n"] for r in kinds}
    a.events = sum(a.events_by_kind.values())
    for job_id in confirmed:
        s = state.get(job_id)
        if s == "completed":
            a.completed += 1
        if s in TERMINAL:
            continue
        if job_id in queued:
            a.stuck += 1
            a.note("stuck", job_id)
        else:
            a.lost += 1
            a.note("lost", job_id)
    return a, first_start


@dataclass
class IngestFigures:
    events: int = 0
    lag_p50: float = 0.0
    lag_p99: float = 0.0
    lag_max: float = 0.0
    per_s: float = 0.0
    peak_per_s: float = 0.0
    completed_per_s: float = 0.0


async def ingest(conn: asyncpg.Connection, since: float, until: float) -> IngestFigures:
    """Every event (any tenant, node events too) whose node time falls in [since, until]."""
    lo, hi = datetime.fromtimestamp(since, UTC), datetime.fromtimestamp(until, UTC)
    r = await conn.fetchrow(
        """SELECT count(*) AS n,
                  percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - ts))
                      AS p50,
                  percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM ingested_at - ts))
                      AS p99,
                  max(extract(epoch FROM ingested_at - ts)) AS mx,
                  count(*) FILTER (WHERE kind = 'completed') AS done
           FROM job_events WHERE ts BETWEEN $1 AND $2 AND tenant IS DISTINCT FROM 'seed'""",
        lo, hi,
    )  # fmt: skip
    peak = await conn.fetchval(
        """SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM job_events
           WHERE ts BETWEEN $1 AND $2 AND tenant IS DISTINCT FROM 'seed'
           GROUP BY date_trunc('second', ingested_at)) s""",
        lo, hi,
    )  # fmt: skip
    span = max(until - since, 1e-9)
    return IngestFigures(
        events=r["n"], lag_p50=float(r["p50"] or 0), lag_p99=float(r["p99"] or 0),
        lag_max=float(r["mx"] or 0), per_s=r["n"] / span, peak_per_s=float(peak),
        completed_per_s=r["done"] / span,
    )  # fmt: skip


async def alerts_in_db(conn: asyncpg.Connection, since: float) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        "SELECT rule, subject, state FROM alerts WHERE fired_at >= $1 ORDER BY fired_at",
        datetime.fromtimestamp(since, UTC),
    )
    return [(r["rule"], r["subject"], r["state"]) for r in rows]
