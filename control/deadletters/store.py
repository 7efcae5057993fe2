"""Dead-letter a job: copy it into the dead-letter stream and record it as failed in Postgres.

A letter is published as `<prefix>.dlq.<tenant>.<job_id>` with Nats-Msg-Id
`dlq-<job_id>-<stream_seq>` (the jobs stream's sequence: unique whatever the tenant)
and `Flotilla-Dlq-*` headers (reason, origin, pool and priority for a retry). In Postgres the
job gets a `failed` event of node `control` (folded like any other event, so the job's event
list says why it ended), a `dead_letters` row and `dead_lettered = true`. Every step is
idempotent, so a handler that dies half-way can simply run again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from common.jsdelete import delete_stored
from control.db import queries
from control.db.store import Incoming, record_submission, store_batch
from control.deadletters.retry import (
    H_DELIVERIES,
    H_POOL,
    H_PRIORITY,
    H_REASON,
    H_SOURCE,
    H_STREAM_SEQ,
    H_SUBJECT,
)
from control.fold import CONTROL_NODE
from schemas.codec import DecodeError, encode
from schemas.events import Failed
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects, parse_stored

MAX_DELIVERIES_REASON = "max deliveries exceeded"
_FRACTION = re.compile(r"(\.\d{6})\d+")


class Advisory(msgspec.Struct, kw_only=True):
    """The fields Flotilla reads from a JetStream consumer advisory (others are ignored)."""

    type: str
    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
    timestamp: str = ""
    reason: str = ""

    @property
    def at(self) -> datetime:
        # RFC 3339 with nanoseconds; Python keeps microseconds.
        text = _FRACTION.sub(r"\1", self.timestamp).replace("Z", "+00:00")
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            return datetime.now(UTC)


ADVISORY_DECODER = msgspec.json.Decoder(Advisory)


@dataclass(slots=True)
class Letter:
    tenant: str
    job_id: str
    stream_seq: int
    source: str
    reason: str
    adv: Advisory
    pool: str
    priority: str
    payload: bytes | None
    subject: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def msg_id(self) -> str:
        return f"dlq-{self.job_id}-{self.stream_seq}"


async def publish(js: JetStreamContext, subjects: Subjects, letter: Letter) -> int | None:
    """Copy the job into the dead-letter stream; its sequence there (None with no payload)."""
    if letter.payload is None:
        return None
    headers = {
        **letter.headers,
        "Nats-Msg-Id": letter.msg_id,
        H_SOURCE: letter.source,
        H_REASON: " ".join(letter.reason.split()),  # header values are one line
        H_STREAM_SEQ: str(letter.stream_seq),
        H_DELIVERIES: str(letter.adv.deliveries),
        H_POOL: letter.pool,
        H_PRIORITY: letter.priority,
    }
    if letter.subject:
        headers[H_SUBJECT] = letter.subject
    subject = subjects.dead_letter(letter.tenant, letter.job_id)
    stream = subjects.dead_letter_stream
    return (await js.publish(subject, letter.payload, headers=headers, stream=stream)).seq


async def record(conn: asyncpg.Connection, letter: Letter, dlq_seq: int | None, fail: bool) -> None:
    """In the caller's transaction: fail the job (when `fail`) and keep the dead letter."""
    if fail:
        failed = Failed(
            event_id=letter.msg_id, job_id=letter.job_id, tenant=letter.tenant,
            node_id=CONTROL_NODE, attempt=letter.adv.deliveries, ts=letter.adv.at.timestamp(),
            reason=letter.reason, error_kind="permanent", final=True,
        )  # fmt: skip
        await store_batch(conn, [Incoming(failed, encode(failed).decode())])
    await conn.execute(
        queries.INSERT_DEAD_LETTER, letter.tenant, letter.job_id, letter.stream_seq, letter.source,
        letter.reason, letter.adv.deliveries, letter.subject, letter.pool, letter.priority,
        letter.payload, dlq_seq, letter.adv.at,
    )  # fmt: skip
    await conn.execute(queries.MARK_DEAD_LETTERED, letter.tenant, letter.job_id)


async def from_max_deliveries(
    js: JetStreamContext, db: asyncpg.Pool, subjects: Subjects, adv: Advisory
) -> str | None:
    """The job message is still in the stream: copy, fail, then delete it. Its job id, or
    None when the message is already gone (handled before, or acked late by a slow node)."""
    seq = adv.stream_seq
    try:
        job = await js.get_msg(adv.stream, seq)
    except NotFoundError:
        return None
    subject, data = job.subject or "", job.data or b""
    stored = parse_stored(subject)
    pool, priority, job_id = stored.pool, stored.priority, stored.job_id
    # The producer's headers travel along, not its Nats-* directives (meant for the jobs stream).
    kept = {k: v for k, v in (job.headers or {}).items() if not k.startswith("Nats-")}
    try:
        spec = JOB_DECODER.decode(data)
    except DecodeError:
        spec = None  # a malformed job: kept in the dead-letter stream as it was
    # Stored under the version 1 subject, a job's tenant is its body's.
    tenant = stored.tenant or (spec.tenant if spec is not None else "")
    letter = Letter(
        tenant, job_id, seq, "max_deliveries", MAX_DELIVERIES_REASON, adv, pool, priority, data,
        subject, kept,
    )  # fmt: skip
    dlq_seq = await publish(js, subjects, letter)
    async with db.acquire() as conn, conn.transaction():
        if spec is not None and (spec.tenant, spec.job_id) == (tenant, job_id):
            at = job.time or adv.at
            await record_submission(conn, spec, submitted_at=at, stream_seq=seq, queued_at=at)
        await record(conn, letter, dlq_seq, fail=True)
    await delete_stored(js, adv.stream, seq)
    return job_id


async def from_terminated(
    js: JetStreamContext, db: asyncpg.Pool, subjects: Subjects, adv: Advisory, job: asyncpg.Record
) -> Letter:
    """The message is gone: re-publish the job from its spec in Postgres (`job` is the row)."""
    reason = (adv.reason or job["last_error"] or "terminated by a node")[:512]
    spec = job["spec"]
    payload = spec.encode() if spec is not None else None
    letter = Letter(
        job["tenant"], job["job_id"], adv.stream_seq, "terminated", reason, adv, job["pool"],
        job["priority"], payload,
    )  # fmt: skip
    dlq_seq = await publish(js, subjects, letter)
    async with db.acquire() as conn, conn.transaction():
        # Not failed yet only when ingest never showed the node's own failed event.
        await record(conn, letter, dlq_seq, fail=job["state"] != "failed")
    return letter
