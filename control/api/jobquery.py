"""The API's Postgres reads: one job, a filtered keyset-paged list, a job's events.

A job is named by (tenant, job_id): two tenants may use the same job id.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from schemas import api
from schemas.alerts import Alert
from schemas.results import JobResult

JOB_COLUMNS = """job_id, tenant, state, pool, priority, operation, node_id, attempts, percent,
fps, speed, submitted_at, started_at, finished_at, queued_at, last_error, stderr_tail,
result::text AS result, dead_lettered, spec->>'input' AS input, spec->>'output' AS output"""


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def job_info(row: asyncpg.Record) -> api.JobInfo:
    sub, start, end = _ts(row["submitted_at"]), _ts(row["started_at"]), _ts(row["finished_at"])
    result = None
    if row["result"]:
        try:
            result = msgspec.json.decode(row["result"], type=JobResult)
        except msgspec.ValidationError:  # an older daemon's result shape: leave it out
            result = None
    return api.JobInfo(
        job_id=row["job_id"],
        tenant=row["tenant"] or "default",
        state=row["state"],
        pool=row["pool"],
        priority=row["priority"],
        operation=row["operation"],
        node_id=row["node_id"],
        attempts=row["attempts"],
        percent=row["percent"],
        fps=row["fps"],
        speed=row["speed"],
        submitted_at=sub,
        started_at=start,
        finished_at=end,
        queue_wait_s=None if start is None or sub is None else max(0.0, start - sub),
        run_time_s=None if start is None or end is None else max(0.0, end - start),
        last_error=row["last_error"],
        stderr_tail=row["stderr_tail"],
        result=result,
        dead_lettered=row["dead_lettered"],
        input=row["input"],
        output=row["output"],
    )


async def get_job(pool: asyncpg.Pool, tenant: str, job_id: str) -> api.JobInfo | None:
    row = await pool.fetchrow(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE tenant = $1 AND job_id = $2", tenant, job_id
    )
    return None if row is None else job_info(row)


async def jobs_with_id(pool: asyncpg.Pool, job_id: str) -> list[api.JobInfo]:
    """Every tenant's job with this id, by tenant."""
    rows = await pool.fetch(
        f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = $1 ORDER BY tenant", job_id
    )
    return [job_info(r) for r in rows]


async def tenants_of(pool: asyncpg.Pool, job_id: str) -> list[str]:
    """The tenants that have a job with this id, sorted."""
    rows = await pool.fetch("SELECT tenant FROM jobs WHERE job_id = $1 ORDER BY tenant", job_id)
    return [str(r["tenant"]) for r in rows]


async def owned(pool: asyncpg.Pool, job_ids: list[str], tenant: str) -> set[str]:
    """Which of these job ids the tenant has (for nodes too old to say whose jobs they run)."""
    rows = await pool.fetch(
        "SELECT job_id FROM jobs WHERE job_id = ANY($1::text[]) AND tenant = $2", job_ids, tenant
    )
    return {r["job_id"] for r in rows}


def encode_cursor(submitted_at: datetime, job_id: str, tenant: str) -> str:
    raw = f"{submitted_at.isoformat()}|{job_id}|{tenant}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    try:
        ts, job_id, tenant = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(ts), job_id, tenant
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"bad cursor: {exc}") from exc


async def list_jobs(
    pool: asyncpg.Pool, req: api.JobListRequest, scope: str | None = None
) -> api.JobListReply:
    """One page; `scope` confines it to that tenant whatever the request's own filters say."""
    where: list[str] = []
    args: list[Any] = []

    def add(clause: str, value: Any) -> None:
        args.append(value)
        where.append(clause.format(f"${len(args)}"))

    if scope is not None:
        add("tenant = {}", scope)
    if req.state is not None:
        add("state = {}", req.state)
    if req.tenant is not None:
        add("tenant = {}", req.tenant)
    if req.node_id is not None:
        add("node_id = {}", req.node_id)
    if req.since is not None:
        add("submitted_at >= {}", datetime.fromtimestamp(req.since, UTC))
    if req.until is not None:
        add("submitted_at < {}", datetime.fromtimestamp(req.until, UTC))
    if req.cursor is not None:
        ts, job_id, tenant = decode_cursor(req.cursor)
        args.extend([ts, job_id, tenant])
        n = len(args)
        where.append(f"(submitted_at, job_id, tenant) < (${n - 2}, ${n - 1}, ${n})")
    args.append(req.limit + 1)
    sql = (
        f"SELECT {JOB_COLUMNS} FROM jobs"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" ORDER BY submitted_at DESC, job_id DESC, tenant DESC LIMIT ${len(args)}"
    )
    rows = await pool.fetch(sql, *args)
    page = rows[: req.limit]
    more = len(rows) > req.limit
    last = page[-1] if more else None
    cursor = (
        None
        if last is None
        else encode_cursor(last["submitted_at"], last["job_id"], last["tenant"])
    )
    return api.JobListReply(jobs=[job_info(r) for r in page], next_cursor=cursor)


async def job_events(
    pool: asyncpg.Pool, tenant: str, job_id: str, limit: int = 1000
) -> api.JobEventsReply:
    rows = await pool.fetch(
        "SELECT event_id, kind, node_id, attempt, ts, body::text AS body FROM job_events"
        " WHERE tenant = $1 AND job_id = $2 ORDER BY ts, event_id LIMIT $3",
        tenant,
        job_id,
        limit,
    )
    events = [
        api.JobEventRecord(
            event_id=r["event_id"],
            kind=r["kind"],
            node_id=r["node_id"],
            attempt=r["attempt"],
            ts=r["ts"].timestamp(),
            body=msgspec.json.decode(r["body"]),
        )
        for r in rows
    ]
    return api.JobEventsReply(job_id=job_id, tenant=tenant, events=events)


async def jobs_by_state(pool: asyncpg.Pool, tenant: str | None = None) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT state, count(*) AS n FROM jobs WHERE $1::text IS NULL OR tenant = $1"
        " GROUP BY state",
        tenant,
    )
    return {r["state"]: r["n"] for r in rows}


async def firing_alerts(pool: asyncpg.Pool, limit: int = 100) -> list[Alert]:
    rows = await pool.fetch(
        "SELECT alert_id, rule, severity, subject, summary, value, threshold, fired_at"
        " FROM alerts WHERE state = 'firing' ORDER BY fired_at DESC LIMIT $1",
        limit,
    )
    return [
        Alert(
            alert_id=r["alert_id"], rule=r["rule"], severity=r["severity"], state="firing",
            subject=r["subject"], summary=r["summary"], value=r["value"],
            threshold=r["threshold"], fired_at=r["fired_at"].timestamp(),
        )
        for r in rows
    ]  # fmt: skip
