"""Cancelling a job: delete it from the jobs stream while queued; once running, ask its node."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas.common import PRIORITIES
from schemas.subjects import Subjects


async def delete_queued(
    js: JetStreamContext, subjects: Subjects, pools: list[str], job_id: str
) -> bool:
    """Remove the job's message if it is still stored; the partition follows from the id, so
    only pool and priority are unknown: a handful of direct look-ups."""
    for pool in pools:
        for prio in PRIORITIES:
            stored = subjects.job_stored(pool, prio, job_id)
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
