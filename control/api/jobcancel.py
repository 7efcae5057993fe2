"""Cancelling a job: delete it from the jobs stream while queued; once running, ask its node."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas.common import PRIORITIES
from schemas.subjects import Subjects


async def delete_queued(
    js: JetStreamContext,
    subjects: Subjects,
    pools: list[str],
    job_id: str,
    tenant: str | None = None,
) -> bool:
    """Remove the job's message if it is still stored; the partition follows from the id, so
    only pool and priority are unknown: a handful of direct look-ups. Without `tenant` the
    look-up matches any tenant token (the server takes a wildcard there; job ids are global),
    and a job stored under the version 1 subject, before the upgrade, is found too."""
    for pool in pools:
        for prio in PRIORITIES:
            for stored in (
                subjects.job_stored(tenant or "*", pool, prio, job_id),
                subjects.job_stored_v1(pool, prio, job_id),
            ):
                try:
                    msg = await js.get_last_msg(subjects.jobs_stream, stored)
                except NotFoundError:
                    continue
                if msg.seq is not None:
                    return bool(await js.delete_msg(subjects.jobs_stream, msg.seq))
    return False


async def mark_cancelled(db: asyncpg.Pool, job_id: str, reason: str) -> None:
    """Terminal in Postgres; state_rank 4 keeps a late event from reviving it (see fold)."""
    await db.execute(
        "UPDATE jobs SET state = 'cancelled', state_rank = 4, finished_at = now(),"
        " last_error = $2, updated_at = now() WHERE job_id = $1 AND state_rank < 4",
        job_id, reason,
    )  # fmt: skip
