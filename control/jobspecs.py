"""Keep the spec of jobs submitted straight to NATS: read it from the jobs stream when accepted.

A job published with `nats pub` never passes through the API, so Postgres learns of it only from
its events, which do not carry the spec. When a node accepts it, the message is still in the
work-queue stream (it leaves on ack or term), so the spec is read there by sequence and kept in
`jobs.spec`: a job a node later terminates can then be put into the dead-letter stream and
re-submitted. Best effort: a job that finished before its spec was read simply has none.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from control.db import DATA_ERRORS, is_transient, queries
from control.db.store import record_submission
from schemas.codec import DecodeError
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.ingest")

_CONCURRENCY = 16


async def _read(
    js: JetStreamContext, stream: str, seq: int, gate: asyncio.Semaphore
) -> RawStreamMsg | None:
    async with gate:
        try:
            return await js.get_msg(stream, seq)
        except Exception as exc:  # gone (acked, terminated) or NATS away: nothing to keep
            log.debug("job message %d not readable: %s", seq, exc)
            return None


async def capture_specs(
    js: JetStreamContext, db: asyncpg.Pool, subjects: Subjects, accepted: dict[str, int]
) -> int:
    """Store the spec of each job in `accepted` (job id → stream seq) that has none yet."""
    try:
        rows = await db.fetch(queries.JOBS_WITHOUT_SPEC, list(accepted))
        missing = [r["job_id"] for r in rows]
        gate = asyncio.Semaphore(_CONCURRENCY)
        stream = subjects.jobs_stream
        msgs = await asyncio.gather(*(_read(js, stream, accepted[j], gate) for j in missing))
        stored = 0
        async with db.acquire() as conn:
            for job_id, msg in zip(missing, msgs, strict=True):
                if msg is None or msg.data is None or msg.time is None:
                    continue
                try:
                    spec = JOB_DECODER.decode(msg.data)
                except DecodeError:
                    continue  # the node fails it with the reason; there is nothing to re-submit
                if spec.job_id != job_id:
                    continue
                await record_submission(
                    conn, spec, submitted_at=msg.time, stream_seq=msg.seq, queued_at=msg.time
                )
                stored += 1
        return stored
    except Exception as exc:
        if not (is_transient(exc) or isinstance(exc, DATA_ERRORS)):
            raise
        log.warning("could not keep job specs: %s", exc)
        return 0
