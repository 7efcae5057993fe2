"""Re-submit a dead letter (`flotilla jobs retry JOB`), and the headers dead letters carry.

A dead letter is the job message as it was, in `<prefix>.dlq.<tenant>.<job_id>` on the
dead-letter stream (`<prefix>.dlq.<job_id>` before job ids were per tenant), with
`Flotilla-Dlq-*` headers saying where it came from. A retry publishes its payload to
`<prefix>.submit.<tenant>.<pool>.<priority>.<job_id>` again: the job's own tenant (a daemon fails
a job whose subject and body disagree).

The Nats-Msg-Id of a retry is `<tenant>.<job_id>.retry.<dlq seq>`, not the job's own: that was
used for the first submission, and a second publish with it inside the jobs stream's
duplicate window would be dropped as a duplicate. Keying it on the dead letter's sequence makes
a double-clicked retry of the same dead letter a duplicate (stored once), while a job that dies
again gets a new dead letter and can be retried again.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from control.db import queries
from control.errors import NotFound
from schemas.api import SubmitReply
from schemas.codec import DecodeError
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects, parse_stored, retry_msg_id

H_PREFIX = "Flotilla-Dlq-"
H_REASON = "Flotilla-Dlq-Reason"
H_SOURCE = "Flotilla-Dlq-Source"
H_SUBJECT = "Flotilla-Dlq-Subject"
H_STREAM_SEQ = "Flotilla-Dlq-Stream-Seq"
H_DELIVERIES = "Flotilla-Dlq-Deliveries"
H_POOL = "Flotilla-Dlq-Pool"
H_PRIORITY = "Flotilla-Dlq-Priority"
H_RETRY_OF = "Flotilla-Retry-Of"
#: Events of the dead run newer than this before the retry still count as the dead run's.
RETRY_CUTOFF_SECONDS = 60.0


class DeadLetterNotFound(NotFound):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"no dead letter for job {job_id}")
        self.job_id = job_id


def _route(headers: dict[str, str], data: bytes) -> tuple[str, str, str]:
    """The (tenant, pool, priority) to re-submit to: pool and priority from the headers, else
    from the spec; the tenant from the spec, else from the stored subject, else `default`."""
    pool, priority = headers.get(H_POOL), headers.get(H_PRIORITY)
    try:
        spec = JOB_DECODER.decode(data)
    except DecodeError as exc:
        if not (pool and priority):
            msg = f"dead letter names no pool and its payload is not a job: {exc}"
            raise ValueError(msg) from exc
        # Not a job: it goes back as it was, and its daemon fails it again whatever the tenant.
        return _stored_tenant(headers.get(H_SUBJECT, "")) or "default", pool, priority
    return spec.tenant, pool or spec.pool, priority or spec.priority


def _stored_tenant(subject: str) -> str | None:
    try:
        return parse_stored(subject).tenant
    except ValueError:
        return None


async def _last_letter(
    js: JetStreamContext, subjects: Subjects, tenant: str, job_id: str
) -> tuple[RawStreamMsg, str, str]:
    """The job's latest dead letter and where to re-submit it: (message, pool, priority)."""
    stream = subjects.dead_letter_stream
    with contextlib.suppress(NotFoundError):
        msg = await js.get_last_msg(stream, subjects.dead_letter(tenant, job_id))
        _, pool, priority = _route(dict(msg.headers or {}), msg.data or b"")
        return msg, pool, priority
    try:  # kept before job ids were per tenant: the letter is this tenant's if its body says so
        msg = await js.get_last_msg(stream, subjects.dead_letter_v1(job_id))
    except NotFoundError:
        raise DeadLetterNotFound(job_id) from None
    owner, pool, priority = _route(dict(msg.headers or {}), msg.data or b"")
    if owner != tenant:
        raise DeadLetterNotFound(job_id)
    return msg, pool, priority


async def retry_dead_letter(
    js: JetStreamContext,
    subjects: Subjects,
    tenant: str,
    job_id: str,
    *,
    db: asyncpg.Pool | None = None,
) -> SubmitReply:
    """Re-publish the latest dead letter of the tenant's job; with `db`, restart the job's row
    and mark the dead letter retried. Raises DeadLetterNotFound when the job has none."""
    msg, pool, priority = await _last_letter(js, subjects, tenant, job_id)
    data = msg.data or b""
    dlq_seq = msg.seq or 0
    headers = {
        k: v
        for k, v in dict(msg.headers or {}).items()
        if not k.startswith((H_PREFIX, "Nats-Expected-")) and k != "Nats-Msg-Id"
    }
    headers["Nats-Msg-Id"] = retry_msg_id(tenant, job_id, dlq_seq)
    headers[H_RETRY_OF] = str(dlq_seq)
    subject = subjects.submit(tenant, pool, priority, job_id)
    if db is None:
        ack = await js.publish(subject, data, headers=headers)
    else:
        async with db.acquire() as conn, conn.transaction():
            # The row lock holds back ingest of the new run's first events until the reset.
            await conn.execute(queries.LOCK_JOB, tenant, job_id)
            now = datetime.now(UTC)
            ack = await js.publish(subject, data, headers=headers)
            if not ack.duplicate:
                await conn.execute(
                    queries.RESET_FOR_RETRY, job_id, now, RETRY_CUTOFF_SECONDS, tenant
                )
                await conn.execute(queries.SET_STREAM_SEQ, job_id, ack.seq, tenant)
                await conn.execute(queries.MARK_RETRIED, job_id, tenant)
    return SubmitReply(
        job_id=job_id,
        subject=subject,
        stream=ack.stream,
        seq=ack.seq,
        duplicate=bool(ack.duplicate),
    )
