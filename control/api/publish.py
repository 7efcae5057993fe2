"""The one way a job reaches the jobs stream from the control plane: the API's submit and the
leader's workflow steps both publish here, with the same deduplicating message id, and record
the submission when Postgres is there."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import PubAck

from control.api import tenants
from control.api.ratelimit import take_token
from control.db.store import record_submission
from schemas.codec import encode
from schemas.jobs import JobSpec
from schemas.subjects import Subjects, job_msg_id


async def publish_job(js: JetStreamContext, subjects: Subjects, job: JobSpec) -> PubAck:
    """Publish `job`; a repeat within the stream's duplicate window is acked as a duplicate."""
    return await js.publish(
        submit_subject(subjects, job), encode(job),
        headers={"Nats-Msg-Id": job_msg_id(job.tenant, job.job_id)}, stream=subjects.jobs_stream,
    )  # fmt: skip


def submit_subject(subjects: Subjects, job: JobSpec) -> str:
    """A job with a deadline is held for the leader to release earliest deadline first; any
    other joins its tier's queue in submit order."""
    if job.deadline is not None:
        return subjects.timed(job.tenant, job.pool, job.priority, job.job_id)
    return subjects.submit(job.tenant, job.pool, job.priority, job.job_id)


async def record(
    conn: asyncpg.Connection, job: JobSpec, ack: PubAck, estimated_run_s: float | None = None
) -> None:
    await record_submission(conn, job, submitted_at=datetime.now(UTC), stream_seq=ack.seq,
                            estimated_run_s=estimated_run_s)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limits:
    """The fleet's default submit rate (per tenant) for tenants without their own limits."""

    rate: float
    burst: int


async def over_limits(db: asyncpg.Pool, tenant: str, default: Limits) -> str | None:
    """Why one more submit of this tenant is refused now (rate, queue), or None: it may go.
    Takes the submit's token from the tenant's bucket, at its own limits or else `default`."""
    take = await take_token(db, tenant, default.rate, default.burst)
    if not take.taken:
        return f"tenant {tenant!r} is over its submit rate"
    if take.max_queued is not None:
        queued = await tenants.queued_count(db, tenant)
        if queued >= take.max_queued:
            return f"tenant {tenant!r} has {take.max_queued} jobs queued"
    return None
