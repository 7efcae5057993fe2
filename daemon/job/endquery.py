"""Before a redelivered job that never ran here runs: did the node before this one end it?

A node that published a job's terminal event and died before its ack leaves the message to be
redelivered after `ack_wait`; its own journal settles it if it comes back (daemon.job.redelivery),
but if it stays down the next node would run the job again. So a node asks the control plane
(schemas.jobend), whose jobs table only the attempt holders' events move, and acks (or terms) the
message instead of running it when the answer names this very message as ended. No answer means
run it: a fleet without a reachable control plane behaves as before, at least once.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from daemon.job.lease import settle
from schemas.codec import DecodeError, Decoder, encode
from schemas.jobend import JobEndQuery, JobEndReply
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.job")

#: How long a redelivered job waits for the answer before it runs anyway.
ASK_TIMEOUT_S = 2.0
REPLY_DECODER: Decoder[JobEndReply] = Decoder(JobEndReply, "job end reply", max_bytes=4096)


class EndQuery:
    """Asks on this node's own subject; the reply comes back on its own inbox."""

    def __init__(
        self, nc: Client, subjects: Subjects, node_id: str, timeout: float = ASK_TIMEOUT_S
    ) -> None:
        self.nc, self.subject, self.timeout = nc, subjects.job_end(node_id), timeout

    async def __call__(
        self, tenant: str, job_id: str, stream_seq: int, delivery: int
    ) -> JobEndReply | None:
        query = JobEndQuery(tenant=tenant, job_id=job_id, stream_seq=stream_seq, delivery=delivery)
        try:
            msg = await self.nc.request(self.subject, encode(query), timeout=self.timeout)
            reply = REPLY_DECODER.decode(msg.data)
        except (NatsError, TimeoutError, OSError, DecodeError) as exc:
            log.info("no answer on whether the job already ended (%s): running it", exc or
                     type(exc).__name__, extra={"job_id": job_id})  # fmt: skip
            return None
        if reply.error:
            log.info("job end query refused (%s): running it", reply.error,
                     extra={"job_id": job_id})  # fmt: skip
        return reply


async def settle_if_ended_elsewhere(
    msg: Msg, tenant: str, job_id: str, ask: EndQuery | None
) -> bool:
    """True when the control plane holds this message's job as ended: the message is acked
    (completed) or termed (failed, cancelled) as the node that ended it would have."""
    if ask is None:
        return False
    meta = msg.metadata
    reply = await ask(tenant, job_id, meta.sequence.stream, meta.num_delivered)
    if reply is None or reply.ended is None:
        return False
    log.info("redelivered after attempt %d ended %s on %s: not running it again",
             reply.attempt, reply.ended, reply.node_id or "another node",
             extra={"job_id": job_id})  # fmt: skip
    await settle(msg, b"+ACK" if reply.ended == "completed" else b"+TERM")
    return True
