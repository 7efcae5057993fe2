"""Cancelling a job: delete it from the jobs stream while queued; once running, ask its node."""

from __future__ import annotations

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from common.jsdelete import delete_stored
from schemas.codec import DecodeError
from schemas.common import PRIORITIES
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects, parse_stored


async def delete_queued(
    js: JetStreamContext,
    subjects: Subjects,
    pools: list[str],
    job_id: str,
    tenant: str | None = None,
) -> bool:
    """Remove the tenant's job message if it is still queued: held for its deadline's release,
    or stored in a lane and not yet handed to a node. The partition follows from the id, so
    only pool and priority are unknown: a handful of direct look-ups. Without `tenant` (an
    operator's cancel of a job not recorded yet) the look-up matches any tenant token. A job
    stored under the version 1 subject, before the upgrade, is found too: its body names the
    tenant. A message its consumer has delivered is left alone, even before the node's first
    heartbeat lists the job: deleting it would not stop the node, and the job would be reported
    cancelled while it ran on."""
    stream = subjects.jobs_stream
    for pool in pools:
        for prio in PRIORITIES:
            held = False
            for stored, tenant_in_subject in (
                (subjects.held_stored(tenant or "*", pool, prio, job_id), True),
                (subjects.due_stored(tenant or "*", pool, prio, job_id), True),
                (subjects.job_stored(tenant or "*", pool, prio, job_id), True),
                (subjects.job_stored_v1(pool, prio, job_id), False),
            ):
                try:
                    msg = await js.get_last_msg(stream, stored)
                except NotFoundError:
                    continue
                if msg.seq is None or not (tenant_in_subject or _body_is(msg, tenant)):
                    continue
                if (msg.subject or "").startswith(f"{subjects.prefix}.timed."):
                    # Never handed out; but a leader that died mid-release left a due copy
                    # too (the next looks at the held one only): that is looked for next.
                    held = await delete_stored(js, stream, msg.seq)
                    continue
                if await _handed_out(js, subjects, pool, prio, msg):
                    return False
                return await delete_stored(js, stream, msg.seq) or held
            if held:
                return True
    return False


async def _handed_out(
    js: JetStreamContext, subjects: Subjects, pool: str, prio: str, msg: RawStreamMsg
) -> bool:
    """Whether the lane holding the message has delivered it (a consumer delivers in stream
    order, so everything up to its delivered sequence has gone to some node)."""
    subject = msg.subject or ""
    try:
        tenant = parse_stored(subject).tenant
    except ValueError:
        tenant = None
    due = subject.startswith(f"{subjects.prefix}.due.")
    lane = subjects.lane(pool, prio, tenant, due=due)
    if lane is None:  # a fair-share pool's tenant with no share: no node pulls it
        return False
    try:
        info = await js.consumer_info(subjects.jobs_stream, lane.consumer)
    except NotFoundError:
        return False
    delivered = info.delivered.stream_seq if info.delivered is not None else 0
    return (msg.seq or 0) <= (delivered or 0)


def _body_is(msg: RawStreamMsg, tenant: str | None) -> bool:
    if tenant is None:
        return True
    try:
        return JOB_DECODER.decode(msg.data or b"").tenant == tenant
    except DecodeError:
        return False


async def mark_cancelled(db: asyncpg.Pool, tenant: str, job_id: str, reason: str) -> None:
    """Terminal in Postgres; state_rank 4 keeps a late event from reviving it (see fold)."""
    await db.execute(
        "UPDATE jobs SET state = 'cancelled', state_rank = 4, finished_at = now(),"
        " last_error = $3, updated_at = now()"
        " WHERE tenant = $1 AND job_id = $2 AND state_rank < 4",
        tenant, job_id, reason,
    )  # fmt: skip
