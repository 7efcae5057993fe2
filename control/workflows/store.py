"""Workflows in Postgres: the rows a submit writes, what a reconcile reads and locks, the API's
reads. A workflow is named by (tenant, workflow_id), as a job is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import msgspec

from control.workflows.plan import StepChange, StepView
from schemas.jobs import JobSpec
from schemas.workflows import (
    StepInfo,
    WorkflowInfo,
    WorkflowListReply,
    WorkflowListRequest,
    WorkflowSpec,
    WorkflowSummary,
)

INSERT_WORKFLOW = """
INSERT INTO workflows (tenant, workflow_id, priority, spec) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (tenant, workflow_id) DO NOTHING
RETURNING workflow_id
"""
INSERT_STEPS = """
INSERT INTO workflow_steps (tenant, workflow_id, name, position, needs, job_id, job)
SELECT $1, $2, s.name, s.position, ARRAY(SELECT json_array_elements_text(s.needs)), s.job_id,
       s.job
FROM json_to_recordset($3::json) AS s(name text, position int, needs json, job_id text, job jsonb)
"""
#: A step with its job's state (the job row is the folded truth, written by ingest).
STEPS = """
SELECT s.name, s.needs, s.state, s.job_id, s.job::text AS job, s.output, s.error,
       j.state AS job_state, j.last_error AS job_error
FROM workflow_steps s LEFT JOIN jobs j ON j.tenant = s.tenant AND j.job_id = s.job_id
WHERE s.tenant = $1 AND s.workflow_id = $2
ORDER BY s.position
"""
#: Workflows a reconcile has anything to do for: running, or with a step not settled yet.
PENDING = """
SELECT tenant, workflow_id FROM workflows WHERE state = 'running'
UNION
SELECT tenant, workflow_id FROM workflow_steps WHERE state IN ('waiting', 'submitted')
LIMIT $1
"""
CHANGE_STEP = """
UPDATE workflow_steps SET state = $4, error = COALESCE($5, error),
    finished_at = CASE WHEN $4 IN ('completed', 'failed', 'cancelled') THEN now() END,
    output = CASE WHEN $4 = 'completed' THEN job->>'output' ELSE output END,
    submitted_at = CASE WHEN $4 = 'submitted' THEN COALESCE(submitted_at, now())
                        ELSE submitted_at END
WHERE tenant = $1 AND workflow_id = $2 AND name = $3
"""
END_WORKFLOW = """
UPDATE workflows SET state = $3, error = $4, finished_at = now(), updated_at = now()
WHERE tenant = $1 AND workflow_id = $2 AND state = 'running'
"""


@dataclass(frozen=True, slots=True)
class StepRow:
    view: StepView
    job_id: str
    job: str  # the job spec's JSON, as published


async def insert(conn: asyncpg.Connection, spec: WorkflowSpec) -> str | None:
    """Record a new workflow and its steps; None when created, else the stored spec's JSON."""
    body = msgspec.json.encode(spec).decode()
    made = await conn.fetchval(INSERT_WORKFLOW, spec.tenant, spec.workflow_id, spec.priority, body)
    if made is None:
        stored: str = await conn.fetchval(
            "SELECT spec::text FROM workflows WHERE tenant = $1 AND workflow_id = $2",
            spec.tenant, spec.workflow_id,
        )  # fmt: skip
        return stored
    jobs = spec.jobs()
    rows = [
        {"name": s.name, "position": i, "needs": s.needs, "job_id": jobs[s.name].job_id,
         "job": msgspec.to_builtins(jobs[s.name])}
        for i, s in enumerate(spec.steps)
    ]  # fmt: skip
    await conn.execute(
        INSERT_STEPS, spec.tenant, spec.workflow_id, msgspec.json.encode(rows).decode()
    )
    return None


async def lock(conn: asyncpg.Connection, tenant: str, workflow_id: str) -> str | None:
    """The workflow's state, its row locked until the transaction ends; None when unknown."""
    state: str | None = await conn.fetchval(
        "SELECT state FROM workflows WHERE tenant = $1 AND workflow_id = $2 FOR UPDATE",
        tenant, workflow_id,
    )  # fmt: skip
    return state


async def steps(conn: asyncpg.Connection, tenant: str, workflow_id: str) -> list[StepRow]:
    rows = await conn.fetch(STEPS, tenant, workflow_id)
    return [
        StepRow(
            StepView(r["name"], tuple(r["needs"]), r["state"], r["job_state"], r["job_error"]),
            r["job_id"],
            r["job"],
        )
        for r in rows
    ]


async def pending(pool: asyncpg.Pool, limit: int) -> list[tuple[str, str]]:
    return [(r["tenant"], r["workflow_id"]) for r in await pool.fetch(PENDING, limit)]


async def change_steps(
    conn: asyncpg.Connection, tenant: str, workflow_id: str, changes: dict[str, StepChange]
) -> None:
    for name, change in changes.items():
        await conn.execute(CHANGE_STEP, tenant, workflow_id, name, change.state, change.error)


async def end(
    conn: asyncpg.Connection, tenant: str, workflow_id: str, state: str, error: str | None
) -> bool:
    done: str = await conn.execute(END_WORKFLOW, tenant, workflow_id, state, error)
    return done.endswith(" 1")


async def taken_job_ids(conn: asyncpg.Connection, tenant: str, job_ids: list[str]) -> list[str]:
    """Which of these job ids the tenant already has jobs under (a step must not adopt one)."""
    rows = await conn.fetch(
        "SELECT job_id FROM jobs WHERE tenant = $1 AND job_id = ANY($2::text[]) ORDER BY job_id",
        tenant, job_ids,
    )  # fmt: skip
    return [r["job_id"] for r in rows]


def job_of(row: StepRow) -> JobSpec:
    return msgspec.json.decode(row.job, type=JobSpec)


# -- the API's reads ----------------------------------------------------------------------


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


async def get(pool: asyncpg.Pool, tenant: str, workflow_id: str) -> WorkflowInfo | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT tenant, workflow_id, state, priority, created_at, finished_at, error"
            " FROM workflows WHERE tenant = $1 AND workflow_id = $2",
            tenant, workflow_id,
        )  # fmt: skip
        if row is None:
            return None
        found = await conn.fetch(STEPS, tenant, workflow_id)
    infos = []
    for s in found:
        job = msgspec.json.decode(s["job"])
        infos.append(
            StepInfo(
                name=s["name"], needs=list(s["needs"]), state=s["state"], job_id=s["job_id"],
                operation=str(job["operation"]["op"]), job_state=s["job_state"],
                input=job.get("input"), output=s["output"] or job.get("output"),
                error=s["error"] or (s["job_error"] if s["job_state"] == "failed" else None),
            )
        )  # fmt: skip
    return WorkflowInfo(
        workflow_id=row["workflow_id"], tenant=row["tenant"], state=row["state"],
        priority=row["priority"], created_at=row["created_at"].timestamp(),
        finished_at=_ts(row["finished_at"]), error=row["error"], steps=infos,
    )  # fmt: skip


async def tenants_of(pool: asyncpg.Pool, workflow_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT tenant FROM workflows WHERE workflow_id = $1 ORDER BY tenant", workflow_id
    )
    return [r["tenant"] for r in rows]


async def list_workflows(
    pool: asyncpg.Pool, req: WorkflowListRequest, scope: str | None
) -> WorkflowListReply:
    tenant = scope if scope is not None else req.tenant
    rows = await pool.fetch(
        """
        SELECT w.tenant, w.workflow_id, w.state, w.created_at, w.finished_at,
               (SELECT count(*) FROM workflow_steps s
                WHERE s.tenant = w.tenant AND s.workflow_id = w.workflow_id) AS steps,
               (SELECT count(*) FROM workflow_steps s
                WHERE s.tenant = w.tenant AND s.workflow_id = w.workflow_id
                  AND s.state = 'completed') AS completed
        FROM workflows w
        WHERE ($1::text IS NULL OR w.tenant = $1) AND ($2::text IS NULL OR w.state = $2)
        ORDER BY w.created_at DESC, w.workflow_id DESC
        LIMIT $3""",
        tenant, req.state, req.limit,
    )  # fmt: skip
    return WorkflowListReply(
        workflows=[
            WorkflowSummary(
                workflow_id=r["workflow_id"],
                tenant=r["tenant"],
                state=r["state"],
                created_at=r["created_at"].timestamp(),
                finished_at=_ts(r["finished_at"]),
                steps=r["steps"],
                completed=r["completed"],
            )
            for r in rows
        ]
    )


async def cancel(
    conn: asyncpg.Connection, tenant: str, workflow_id: str, reason: str
) -> Sequence[str] | None:
    """Mark a running workflow cancelled and its waiting steps too (inside the caller's
    transaction, the workflow row locked first, so a reconcile in flight either submitted its
    step before this or sees the cancel); returns the job ids of its submitted steps that have
    not ended, or None when the workflow had already ended."""
    if await lock(conn, tenant, workflow_id) != "running":
        return None
    await end(conn, tenant, workflow_id, "cancelled", reason)
    await conn.execute(
        "UPDATE workflow_steps SET state = 'cancelled', error = $3, finished_at = now()"
        " WHERE tenant = $1 AND workflow_id = $2 AND state = 'waiting'",
        tenant, workflow_id, reason,
    )  # fmt: skip
    rows = await conn.fetch(
        "SELECT s.job_id FROM workflow_steps s"
        " LEFT JOIN jobs j ON j.tenant = s.tenant AND j.job_id = s.job_id"
        " WHERE s.tenant = $1 AND s.workflow_id = $2 AND s.state = 'submitted'"
        " AND (j.state IS NULL OR j.state NOT IN ('completed', 'failed', 'cancelled'))"
        " ORDER BY s.position",
        tenant, workflow_id,
    )  # fmt: skip
    return [r["job_id"] for r in rows]
