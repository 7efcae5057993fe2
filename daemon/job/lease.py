"""A job message's lease, as JetStream holds it for this node: confirmed keep-alives, confirmed
acks, and whether the job may still commit its outputs.

JetStream facts this relies on (nats-server 2.15; tests/integration/test_effects_once.py):
- an ack, nak, `+WPI` or `+TERM` sent as a request is answered once the server processed it; a
  second ack, or an ack after the message was redelivered, is accepted and answered the same way
  (acks go by stream sequence), so an unconfirmed ack is simply sent again until answered;
- a redelivery happens only `ack_wait` after the last delivery or `+WPI` the server received, so
  while a confirmed `+WPI` is younger than `ack_wait` no other node can hold the message;
- a message acked (or termed) by anyone is gone from the work-queue stream.

So a node commits outputs without asking anyone when it is the message's first delivery and its
lease is unbroken (the common case: no round trip). Otherwise another node may have held the
message; the job commits only if the message is still in the stream (one `STREAM.MSG.GET`): when
it is gone, another attempt already ended the job and this one must leave no trace.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from daemon.journal.store import Journal

log = logging.getLogger("flotilla.job")

#: Seconds of `ack_wait` kept in hand: the server's clock of a lease starts a little before ours.
MARGIN_S = 5.0
#: How long unconfirmed acks are retried (`+WPI` keeps the lease meanwhile); after that the
#: message is redelivered and the redelivery finds the job ended (journal or stream).
ACK_RETRY_S = 600.0
#: How long a redelivered attempt keeps asking whether its message is still queued, and the
#: bound of one try: a broker restarting answers late, and a commit on "unknown" risks a rerun.
CHECK_S, CHECK_TRY_S = 30.0, 5.0


def lease_left(alive_at: float, ack_wait: float, now: float) -> float:
    """Seconds the lease confirmed at `alive_at` surely still runs (clocks: `time.time()`)."""
    return alive_at + ack_wait - min(MARGIN_S, ack_wait / 4) - now


class Lease:
    def __init__(self, msg: Msg, ack_wait: float, *, journal: Journal | None = None,
                 job_id: str = "", attempt: int = 0, tenant: str = "") -> None:  # fmt: skip
        self.msg, self.ack_wait = msg, ack_wait
        self._journal, self._job_id, self._attempt = journal, job_id, attempt
        self._tenant = tenant
        #: When JetStream last confirmed the lease (delivery, then each answered `+WPI`).
        self.alive_at = time.time()
        #: Once set, the message may have been redelivered to another node.
        self.lapsed = False
        #: Another node was handed the message since this lease began (seen on `adopt`).
        self._elsewhere = False

    @property
    def held(self) -> bool:
        """The lease never lapsed: no other node can have been handed the message."""
        return not self.lapsed and lease_left(self.alive_at, self.ack_wait, time.time()) > 0

    async def keep_alive(self) -> None:
        """`+WPI`, confirmed: a lost one (NATS away) does not renew the lease. The server answers
        a `+WPI` even after it redelivered the message, so a lease that lapsed once stays lapsed
        (nor is it written to the journal, so a restart never naks a message gone elsewhere)."""
        sent = time.time()
        self.lapsed = self.lapsed or lease_left(self.alive_at, self.ack_wait, sent) <= 0
        await self.msg._client.request(self.msg.reply, b"+WPI", timeout=2.0)
        if self.lapsed:
            return
        self.alive_at = sent
        if self._journal is not None:
            await self._journal.alive(self._job_id, self._attempt, sent, tenant=self._tenant)

    def adopt(self, msg: Msg) -> bool:
        """Take over `msg` if it is a redelivery of this lease's own message (its `ack_wait`
        passed while NATS was away, or this node settles the job right now); True if it did.

        The attempt running here goes on under the new delivery: running the job a second time
        beside it would run it twice. Only when the delivery count skipped some did another node
        hold the message meanwhile; then the commit still asks the stream (`may_commit`)."""
        old, new = self.msg.metadata, msg.metadata
        if (new.stream, new.sequence.stream) != (old.stream, old.sequence.stream):
            return False
        self._elsewhere = self._elsewhere or new.num_delivered > old.num_delivered + 1
        self.msg, self.alive_at, self.lapsed = msg, time.time(), self._elsewhere
        return True

    async def may_commit(self) -> bool:
        """Whether no other attempt can have ended the job (see the module's docstring)."""
        if self.msg.metadata.num_delivered == 1 and self.held:  # nobody else ever had it
            return True
        meta = self.msg.metadata
        js = self.msg._client.jetstream(timeout=CHECK_TRY_S)
        deadline, delay = time.monotonic() + CHECK_S, 0.5
        while True:
            try:
                await js.get_msg(meta.stream, meta.sequence.stream)
                return True
            except NotFoundError:
                log.warning("job already ended in another attempt: this one stands down",
                            extra={"job_id": self._job_id})  # fmt: skip
                return False
            except (NatsError, TimeoutError, OSError) as exc:
                # A broker just back from a restart answers late: ask again for a while. Still
                # unknown (NATS away, or no right to read the jobs stream): commit, as before;
                # the control plane keeps the first `completed` and stops at one.
                if time.monotonic() + delay > deadline:
                    log.warning("cannot tell whether the job ended elsewhere (%s): committing",
                                exc, extra={"job_id": self._job_id})  # fmt: skip
                    return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def settle(msg: Msg, verb: bytes = b"+ACK", *, within: float = ACK_RETRY_S) -> bool:
    """Ack (or `+TERM`) `msg` and wait for the server's answer, retrying with back-off through
    outages and reconnects for up to `within` seconds; True once confirmed."""
    deadline = time.monotonic() + within
    delay = 0.2
    while True:
        try:
            await msg._client.request(msg.reply, verb, timeout=2.0)
        except (NatsError, TimeoutError, OSError) as exc:
            if msg._client.is_closed or time.monotonic() + delay > deadline:
                log.warning("%s of %s not confirmed (%s): JetStream will redeliver it",
                            verb.decode(), msg.subject, exc)  # fmt: skip
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        msg._ackd = True  # nats-py's own ack/nak/term now refuse: the message is settled
        return True
