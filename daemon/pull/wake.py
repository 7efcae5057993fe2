"""The submit wake-up of one pool: a core subscription on its submit subjects, read as a hint.

The job itself always comes through the durable consumer; the hint only ends an idle wait, so
an idle node starts a new job in milliseconds instead of at its next fallback poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from common.natsconn import sync_subscriptions
from schemas.common import PRIORITIES

log = logging.getLogger("flotilla.puller")


class Wake:
    """The submit hint of one pool: `event` is set by every submit, `hints` counts them per tier."""

    def __init__(self, nc: Client | None, subject: str) -> None:
        self.nc, self.subject = nc, subject
        self.event = asyncio.Event()
        self.hints: Counter[str] = Counter()
        self._sub: Subscription | None = None

    async def _on_submit(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")  # <prefix>.submit.<tenant>.<pool>.<priority>.<job_id>
        if len(tokens) == 6 and tokens[4] in PRIORITIES:
            self.hints[tokens[4]] += 1
        self.event.set()

    async def start(self) -> bool:
        """Subscribe; False (logged here, once) without a connection or when the server refuses.

        A refused subscription raises nothing: the server's -ERR reaches error_cb before the
        PONG of a PING sent after the SUB, so a new `last_error` naming this subject is the
        refusal."""
        if self.nc is None:
            return False
        before = self.nc.last_error
        try:
            self._sub = await self.nc.subscribe(self.subject, cb=self._on_submit)
        except Exception as exc:  # a closed connection: the puller's own retries report it
            log.warning("no wake on %s (%s): polling every fetch_timeout", self.subject, exc)
            return False
        try:
            await sync_subscriptions(self.nc)
        except Exception as exc:  # reconnecting: the subscription is sent again on reconnect
            log.info("wake on %s not confirmed (%s)", self.subject, exc)
            return True
        err = self.nc.last_error
        if err is not before and f'"{self.subject.lower()}"' in str(err).lower():
            log.warning("wake on %s refused (%s): polling every fetch_timeout", self.subject, err)
            await self.stop()  # else every reconnect would subscribe, and be refused, again
            return False
        return True

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()

    def consume(self, prio: str, count: int) -> None:
        self.hints[prio] = max(0, self.hints[prio] - count)
