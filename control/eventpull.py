"""Pull the events stream's shared durable in batches, the next one arriving while the current
one commits.

nats-py's `fetch` waits on a queue once per message and may linger up to its whole timeout to
fill a batch; ingest spent more time there than in Postgres. This puller keeps one pull request
open on its own inbox: the server pushes messages into a buffer through a subscription callback,
and `take` hands out up to a batch as soon as one is full, the request has ended, or the oldest
buffered message has waited `max_wait`. A new request is sent as soon as fewer than a batch are
buffered, so at most two batches are in hand (delivered, not yet acked); the ack-after-commit
contract is the caller's and is unchanged. Messages still buffered at `close` are handed back
for the caller to nak, so another instance gets them at once rather than after `ack_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

log = logging.getLogger("flotilla.ingest")

#: Pull-request statuses that end a request normally: it expired (408), or found nothing (404).
_ENDED = {"404", "408"}
#: After a request the server refused (409 leadership change, consumer deleted…), wait this
#: long before the next, so a refusing server is not asked in a tight loop.
_REFUSED_PAUSE = 0.5
#: A request neither answered nor expired this long after its own expiry (its reply was lost,
#: say in a reconnect) is given up and a new one sent.
_LOST_GRACE = 2.0


class EventPuller:
    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        durable: str,
        *,
        batch: int,
        expires: float,
        max_wait: float,
    ) -> None:
        # nats-py keeps the connection and the API prefix (domain) private on the context.
        self._nc, self._next = js._nc, f"{js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch, self.expires, self.max_wait = batch, expires, max_wait
        self._inbox = self._nc.new_inbox()
        self._sub: Subscription | None = None
        self._buf: list[Msg] = []
        self._first_at = 0.0  # when the oldest buffered message came
        self._wake = asyncio.Event()
        self._req = 0  # id of the open request (its reply subject's last token)
        self._open = 0  # messages the open request may still deliver; 0: none open
        self._lost_at = 0.0  # when the open request counts as lost
        self._pause_until = 0.0

    async def start(self) -> None:
        self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def close(self) -> list[Msg]:
        """Stop listening once the open request has ended (it would go on delivering to nobody,
        and those messages would wait out ack_wait); returns the messages delivered but never
        taken, for the caller to hand back (nak)."""
        ends = self._lost_at - _LOST_GRACE  # its expiry: at most `expires` from now
        while self._open and time.monotonic() < ends:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), ends - time.monotonic())
        if self._sub is not None:
            sub, self._sub = self._sub, None
            try:
                await sub.unsubscribe()
            except Exception as exc:  # the connection is closing or gone: nothing to undo
                log.debug("ingest inbox not unsubscribed: %s", exc)
        left, self._buf = self._buf, []
        return left

    def buffered(self) -> list[Msg]:
        """Messages delivered to this instance and not taken yet (kept alive while Postgres is
        away, like the batch in hand)."""
        return list(self._buf)

    async def take(self) -> list[Msg]:
        """Up to a batch of messages; [] when none came within `expires` (one request's life)."""
        deadline = time.monotonic() + self.expires
        while True:
            now = time.monotonic()
            await self._ask(now)
            n = len(self._buf)
            if n >= self.batch or (n and (not self._open or now - self._first_at >= self.max_wait)):
                out, self._buf = self._buf[: self.batch], self._buf[self.batch :]
                self._first_at = now
                await self._ask(now)  # the next batch comes in while this one commits
                return out
            until = deadline if not n else min(deadline, self._first_at + self.max_wait)
            if self._open and not self._pause_until:
                until = min(until, self._lost_at)
            elif self._pause_until:
                until = min(until, self._pause_until)
            if until <= now:
                if n:
                    continue  # max_wait reached: the check above hands them out
                return []
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), until - now)

    async def _ask(self, now: float) -> None:
        if self._open and now < self._lost_at:
            return
        if len(self._buf) >= self.batch or now < self._pause_until or self._sub is None:
            return
        self._req += 1
        self._open, self._pause_until = self.batch, 0.0
        self._lost_at = now + self.expires + _LOST_GRACE
        request = {"batch": self.batch, "expires": int(self.expires * 1e9)}
        await self._nc.publish(
            self._next, json.dumps(request).encode(), reply=f"{self._inbox}.{self._req}"
        )

    async def _on_msg(self, msg: Msg) -> None:
        if msg.reply:  # a stored message (its reply subject is where its ack goes)
            first = not self._buf
            if first:
                self._first_at = time.monotonic()
            self._buf.append(msg)
            if self._open:
                self._open -= 1
            # The first starts the max_wait clock; a full batch or the request's end ends it.
            if first or len(self._buf) >= self.batch or not self._open:
                self._wake.set()
            return
        status = (msg.headers or {}).get("Status", "")
        if not status or msg.subject != f"{self._inbox}.{self._req}":
            return  # a heartbeat, or the end of a request already given up
        empty, self._open = self._open == self.batch, 0
        if status not in _ENDED:
            why = (msg.headers or {}).get("Description", "")
            log.warning("ingest pull refused: %s %s", status, why)
            self._pause_until = time.monotonic() + min(_REFUSED_PAUSE, self.expires)
        elif status == "404" and empty:  # nothing there, said at once: do not ask again at once
            self._pause_until = time.monotonic() + min(_REFUSED_PAUSE, self.expires)
        self._wake.set()
