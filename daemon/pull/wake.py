"""The submit wake-up of one pool: a core subscription on its submit subjects, read as a hint.

The job itself always comes through the durable consumer; the hint only ends an idle wait, so
an idle node starts a new job in milliseconds instead of at its next fallback poll.

Every node of the pool subscribes in one queue group (QUEUE), so a submit wakes one node, not
the whole pool (at a thousand nodes, a thousand consumer-info requests per job). A node with no
free slot for longer than the puller's `pause_after` (50 ms: a busy node's slots free within
milliseconds) leaves the group (`pause`) and rejoins when one frees (`resume`), so a hint goes to
a node that could not take the job only while it is about to have room; with every node full
the hint reaches nobody, and the first node to free a slot sweeps anyway. Nodes of releases
before the group subscribe without it and still hear every submit.
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
#: The queue group of every node's wake subscription (per subject, so per pool and prefix).
QUEUE = "wake"


class Wake:
    """The submit hint of one pool: `event` is set by every submit, `hints` counts them per tier."""

    def __init__(self, nc: Client | None, subject: str) -> None:
        self.nc, self.subject = nc, subject
        self.event = asyncio.Event()
        self.hints: Counter[str] = Counter()
        #: The tenants of the hints per tier (a fair-share pool fetches their lanes first).
        self.heard: dict[str, set[str]] = {p: set() for p in PRIORITIES}
        self._sub: Subscription | None = None
        self._refused = False
        self._unsubscribed = False
        #: The server once confirmed this subscription: joining again needs no round trip.
        self._confirmed = False

    async def _on_submit(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")  # <prefix>.submit.<tenant>.<pool>.<priority>.<job_id>
        if len(tokens) == 6 and tokens[4] in PRIORITIES:
            self.hints[tokens[4]] += 1
            self.heard[tokens[4]].add(tokens[2])
        self.event.set()

    @property
    def paused(self) -> bool:
        return self._sub is None

    @property
    def received(self) -> int:
        """Hints the server has delivered to this subscription (since it last joined)."""
        return 0 if self._sub is None else self._sub.delivered

    async def pause(self) -> None:
        """Leave the group: the node has no free slot, so a hint is better spent elsewhere."""
        await self.stop()

    async def resume(self) -> bool:
        """Join the group again (a no-op while in it, or once the server refused it)."""
        if self._sub is not None or self._refused:
            return self._sub is not None
        return await self.start()

    async def start(self) -> bool:
        """Subscribe; False (logged here, once) without a connection or when the server refuses.

        A refused subscription raises nothing: the server's -ERR reaches error_cb before the
        PONG of a PING sent after the SUB, so a new `last_error` naming this subject is the
        refusal."""
        if self.nc is None:
            return False
        before = self.nc.last_error
        try:
            self._sub = await self.nc.subscribe(self.subject, queue=QUEUE, cb=self._on_submit)
        except Exception as exc:  # a closed connection: the puller's own retries report it
            level = logging.DEBUG if self._unsubscribed else logging.WARNING
            self._unsubscribed = True  # once: `resume` tries again at every sweep
            log.log(level, "no wake on %s (%s): polling every fetch_timeout", self.subject, exc)
            return False
        self._unsubscribed = False
        if self._confirmed:
            # Permissions do not change while connected, so no refusal can come; and the SUB
            # goes out ahead of the sweep's requests on this connection, so the server holds it
            # before the sweep looks. A resume per finished job then costs no round trip.
            return True
        try:
            await sync_subscriptions(self.nc)
        except Exception as exc:  # reconnecting: the subscription is sent again on reconnect
            log.info("wake on %s not confirmed (%s)", self.subject, exc)
            return True
        err = self.nc.last_error
        if err is not before and f'"{self.subject.lower()}"' in str(err).lower():
            log.warning("wake on %s refused (%s): polling every fetch_timeout", self.subject, err)
            await self.stop()  # else every reconnect would subscribe, and be refused, again
            self._refused = True
            return False
        self._confirmed = True
        return True

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()

    def consume(self, prio: str, count: int) -> None:
        self.hints[prio] = max(0, self.hints[prio] - count)
        if not self.hints[prio]:
            self.heard[prio].clear()
