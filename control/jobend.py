"""Answers a node that asks, before running a redelivered job, whether the job of that very
message already ended on another node (schemas.jobend).

The answer comes from the jobs table, which only the events of an attempt's holder move, and
reaches the node on its own inbox, where no other node may publish. An ending by an attempt that
was not handed out before the asking delivery, or whose attempt another node contested, is not
taken: a lying node cannot make another skip a job. Every instance answers (a queue group);
one question is a few index reads.
"""

from __future__ import annotations

import logging

import asyncpg
from nats.aio.client import Client
from nats.aio.msg import Msg

from control.responder import QueueResponder
from schemas.codec import DecodeError, Decoder, encode
from schemas.jobend import JobEndQuery, JobEndReply
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.jobend")

QUEUE = "flotilla-jobend"
QUERY_DECODER: Decoder[JobEndQuery] = Decoder(JobEndQuery, "job end query", max_bytes=4096)

# The event that set the terminal state names its node and attempt. Trusted only when that
# attempt was handed out before this delivery and nobody else's event for it was refused: a
# node that raced the real holder for the attempt is detected, and its word is not taken here.
_ENDED = """
SELECT j.state, e.node_id, e.attempt FROM jobs j
JOIN job_events e ON e.event_id = j.state_event_id
WHERE j.tenant = $1 AND j.job_id = $2 AND j.stream_seq = $3
  AND j.state IN ('completed', 'failed', 'cancelled') AND e.attempt < $4
  AND NOT EXISTS (
    SELECT 1 FROM rejected_events r
    WHERE r.tenant = j.tenant AND r.job_id = j.job_id AND r.attempt = e.attempt
  )
"""


async def ended(db: asyncpg.Pool, query: JobEndQuery) -> JobEndReply:
    row = await db.fetchrow(_ENDED, query.tenant, query.job_id, query.stream_seq, query.delivery)
    if row is None:
        return JobEndReply()
    return JobEndReply(ended=row[0], node_id=row[1], attempt=row[2])


class JobEndResponder:
    def __init__(self, nc: Client, db: asyncpg.Pool, subjects: Subjects) -> None:
        self.nc, self.db, self.subjects = nc, db, subjects
        self.answered = 0
        self.refused = 0
        self._responder = QueueResponder(nc, subjects.job_end_wildcard, QUEUE, self._answer)
        self.start, self.stop = self._responder.start, self._responder.stop

    async def _answer(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            query = QUERY_DECODER.decode(msg.data)
        except DecodeError as exc:
            self.refused += 1
            await msg.respond(encode(JobEndReply(error=str(exc)[:512])))
            return
        try:
            reply = await ended(self.db, query)
        except (asyncpg.PostgresError, OSError) as exc:
            # The node runs the job as it would with no control plane at all.
            log.warning("job end query for %s/%s failed: %s", query.tenant, query.job_id, exc)
            reply = JobEndReply(error="the jobs table could not be read")
        self.answered += 1
        await msg.respond(encode(reply))
