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
import math
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

    def __init__(self, nc: Client | None, subject: str, due: str | None = None) -> None:
        self.nc, self.subject, self.due = nc, subject, due
        self.event = asyncio.Event()
        self.hints: Counter[str] = Counter()
        #: The tenants of the hints per tier (a fair-share pool fetches their lanes first).
        self.heard: dict[str, set[str]] = {p: set() for p in PRIORITIES}
        #: The tenants of the jobs the leader released into each tier's due lane (`due`).
        self.heard_due: dict[str, set[str]] = {p: set() for p in PRIORITIES}
        #: Loop time of the last release heard (-inf: none yet).
        self.due_at = -math.inf
        self._sub: Subscription | None = None
        self._due_sub: Subscription | None = None
        self._refused = self._due_refused = False
        self._unsubscribed = False
        #: The server once confirmed this subscription: joining again needs no round trip.
        self._confirmed = False

    async def _on_submit(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")  # <prefix>.submit.<tenant>.<pool>.<priority>.<job_id>
        if len(tokens) == 6 and tokens[4] in PRIORITIES:
            self.hints[tokens[4]] += 1
            self.heard[tokens[4]].add(tokens[2])
        self.event.set()

    async def _on_due(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")  # <prefix>.due.<pool>.<prio>.<partition>.<tenant>.<id>
        if len(tokens) == 7 and tokens[3] in PRIORITIES:
            self.hints[tokens[3]] += 1
            self.heard_due[tokens[3]].add(tokens[5])
            self.due_at = asyncio.get_running_loop().time()
        self.event.set()

    @property
    def paused(self) -> bool:
        return self._sub is None

    @property
    def hears_due(self) -> bool:
        """Whether releases into the pool's due lanes wake it (subscribed, not refused)."""
        return self._due_sub is not None

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
            if self.due is not None and not self._due_refused and self._confirmed:
                self._due_sub = await self.nc.subscribe(self.due, queue=QUEUE, cb=self._on_due)
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
        if err is not before and _names(err, self.subject):
            log.warning("wake on %s refused (%s): polling every fetch_timeout", self.subject, err)
            await self.stop()  # else every reconnect would subscribe, and be refused, again
            self._refused = True
            return False
        self._confirmed = True
        if self.due is not None:
            await self._start_due()
        return True

    async def _start_due(self) -> None:
        """The due lane's hints, confirmed on their own (the server names one refusal at a
        time). Refused by credentials of the release before: released deadline jobs are found
        by the fallback poll; the submits' hints still come."""
        assert self.nc is not None and self.due is not None
        before = self.nc.last_error
        try:
            self._due_sub = await self.nc.subscribe(self.due, queue=QUEUE, cb=self._on_due)
            await sync_subscriptions(self.nc)
        except Exception as exc:  # reconnecting: sent again on reconnect
            log.info("wake on %s not confirmed (%s)", self.due, exc)
            return
        err = self.nc.last_error
        if err is not before and _names(err, self.due):
            log.warning("wake on %s refused (%s)", self.due, err)
            due, self._due_sub, self._due_refused = self._due_sub, None, True
            if due is not None:
                with contextlib.suppress(Exception):
                    await due.unsubscribe()

    async def stop(self) -> None:
        subs, self._sub, self._due_sub = (self._sub, self._due_sub), None, None
        for sub in subs:
            if sub is not None:
                with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                    await sub.unsubscribe()

    def consume(self, prio: str, count: int) -> None:
        self.hints[prio] = max(0, self.hints[prio] - count)
        if not self.hints[prio]:
            self.heard[prio].clear()
            self.heard_due[prio].clear()


def _names(err: Exception | None, subject: str) -> bool:
    return f'"{subject.lower()}"' in str(err).lower()
