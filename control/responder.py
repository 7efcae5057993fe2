"""A queue-group subscription that answers requests: what the control plane's small responders
share (the version 1 submit refusal, the ended-elsewhere question)."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from common.natsconn import sync_subscriptions


class QueueResponder:
    def __init__(
        self, nc: Client, subject: str, queue: str, answer: Callable[[Msg], Awaitable[None]]
    ) -> None:
        self.nc, self.subject, self.queue, self.answer = nc, subject, queue, answer
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(self.subject, queue=self.queue, cb=self.answer)
        # Started means answering: a request right after must not see no responders.
        await sync_subscriptions(self.nc)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):  # a closed connection has nothing to undo
                await sub.unsubscribe()
