"""Messages JetStream delivers again, and the ones a restarted node gives back at once.

- A redelivered message whose job already ended on this node (its ack was lost: a crash or an
  outage between the terminal event and the ack) does not run again: its terminal event, kept in
  the outbox, is made sure of (published if it never was, under the same event id, so the events
  stream and the control plane drop a copy) and the message is acked or termed as it was then.
- A restarted node settles the attempts that ended here but whose ack (or term) was never
  confirmed (a crash between the two): once their terminal event is surely published, the ack
  goes to the message's reply subject. Otherwise JetStream would redeliver the message after
  `ack_wait`, maybe to another node, which would run the job again; past the lease it may have
  done so already, and the ack makes that attempt stand down before it commits.
- A restarted node hands its interrupted attempts back with a `-NAK` to each message's reply
  subject, which any connection may send: the job is redelivered at once instead of after
  `ack_wait`. Only while the lease is surely still ours (daemon.job.lease): JetStream acts on a nak
  by stream sequence, so once the message may have gone to another node a nak would take it from
  there too; such attempts are left to JetStream's own redelivery.
"""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from daemon.job.lease import lease_left, settle
from daemon.journal.outbox import OutboxPublisher
from daemon.journal.reporter import Reporter
from daemon.journal.store import Journal

log = logging.getLogger("flotilla.job")

#: How long a restart waits, over all its ended attempts, for their results to be published
#: before their acks (each also as long as its lease runs).
SEND_WAIT_S = 30.0


async def settle_if_ended(msg: Msg, tenant: str, job_id: str, reporter: Reporter) -> bool:
    """True when an attempt of this very message (same stream sequence) already ended here."""
    ended = await reporter.journal.ended(job_id, msg.metadata.sequence.stream, tenant=tenant)
    if ended is None:
        return False
    log.info("redelivered after attempt %d ended (%s): not running it again", ended.attempt,
             ended.kind or "pruned", extra={"job_id": job_id})  # fmt: skip
    if ended.kind is not None:  # still in the outbox: sent, or sent now, before the ack
        while not await reporter.outbox.wait_sent(ended.event_id, 30.0):
            pass
    if await settle(msg, b"+ACK" if ended.kind in (None, "completed") else b"+TERM"):
        await reporter.journal.settled(job_id, ended.attempt, tenant=tenant, durable=False)
    return True


async def settle_unsettled_ends(
    journal: Journal, outbox: OutboxPublisher, nc: Client, ack_wait: float
) -> int:
    """Ack (or term) the messages of attempts that ended before a crash took their ack; returns
    how many the server confirmed.

    Past the lease too: the message may be another node's by now, running the job again, and the
    ack (by stream sequence) takes it from the stream, so that attempt's commit gate finds it gone
    and stands down (daemon.job.lease). Left to JetStream, the job would end twice. A nak is
    another matter (`hand_back_interrupted`): it would hand the job on from whoever holds it."""
    confirmed = 0
    send_by = time.monotonic() + SEND_WAIT_S  # for all of them: NATS away must not stall start
    for end in await journal.unsettled_ends():
        d = end.delivery
        left = lease_left(d.alive_at, ack_wait, time.time())
        wait = max(left, send_by - time.monotonic(), 0.1)
        try:
            # The result goes out before the ack, as in the run itself (a pruned one was sent).
            if end.kind is None or await outbox.wait_sent(end.event_id, wait):
                await nc.request(d.reply, end.verb, timeout=2.0)
                confirmed += 1
        except (NatsError, TimeoutError, OSError, LookupError) as exc:
            log.warning("ack of an ended attempt not confirmed (%s); JetStream redelivers it",
                        exc, extra={"job_id": d.job_id})  # fmt: skip
        await journal.settled(d.job_id, d.attempt, tenant=d.tenant)
    if confirmed:
        log.info("settled %d job(s) that ended before the last stop took their ack", confirmed)
    return confirmed


async def hand_back_interrupted(journal: Journal, nc: Client, ack_wait: float) -> int:
    """Nak the messages of attempts a crash interrupted; returns how many were handed back."""
    naked = 0
    for d in await journal.interrupted_deliveries():
        left = lease_left(d.alive_at, ack_wait, time.time())
        if left > 0:
            try:
                await nc.request(d.reply, b"-NAK", timeout=min(2.0, left))
                naked += 1
            except (NatsError, TimeoutError, OSError) as exc:
                log.warning("hand-back not confirmed (%s); JetStream redelivers it after "
                            "ack_wait", exc, extra={"job_id": d.job_id})  # fmt: skip
        else:
            log.info("interrupted attempt %d is past its lease: JetStream redelivers it",
                     d.attempt, extra={"job_id": d.job_id})  # fmt: skip
        await journal.settled(d.job_id, d.attempt, tenant=d.tenant)
    if naked:
        log.info("handed %d interrupted job(s) back for redelivery now", naked)
    return naked
