"""Encoder health: withdraw an encoder that fails several jobs in a row, re-verify it later.

Only encoder failures count (the operation reports them in `JobContext.encoder_failures` even
when a fallback then succeeded); a job that fails on its input says nothing about the encoder.
A success with an encoder resets its count. A withdrawn encoder is re-tested after
`encoder_reverify_interval` and returns when its test encode passes again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from daemon.job.requirements import NodeView
from daemon.journal.reporter import Reporter, new_event_id
from schemas.events import EncoderHealth

log = logging.getLogger("flotilla.encoders")
#: (encoder) -> None when it works again, else the reason it still fails.
Reverify = Callable[[str], Awaitable[str | None]]


class EncoderHealthTracker:
    def __init__(
        self, node: NodeView, reporter: Reporter, threshold: int, reverify_after: float
    ) -> None:
        self.node, self.reporter = node, reporter
        self.threshold, self.reverify_after = threshold, reverify_after
        self._streak: dict[str, int] = {}
        self._withdrawn_at: dict[str, float] = {}

    async def job_done(self, failed: list[str], succeeded: str | None) -> None:
        if succeeded is not None:
            self._streak.pop(succeeded, None)
        for encoder in failed:
            self._streak[encoder] = self._streak.get(encoder, 0) + 1
            if self._streak[encoder] >= self.threshold and encoder not in self._withdrawn_at:
                await self._set(encoder, False, f"failed {self._streak[encoder]} jobs in a row")

    async def _set(self, encoder: str, healthy: bool, reason: str) -> None:
        if healthy:
            self._withdrawn_at.pop(encoder, None)
            self.node.withdrawn_encoders.discard(encoder)
            self._streak.pop(encoder, None)
        else:
            self._withdrawn_at[encoder] = time.monotonic()
            self.node.withdrawn_encoders.add(encoder)
        log.warning("encoder %s %s: %s", encoder, "restored" if healthy else "withdrawn", reason)
        event = EncoderHealth(
            event_id=new_event_id(), node_id=self.reporter.node_id, ts=time.time(),
            encoder=encoder, healthy=healthy, reason=reason[:512],
        )  # fmt: skip
        await self.reporter.record(None, None, event)

    async def run(self, reverify: Reverify, poll: float = 10.0) -> None:
        """Re-test withdrawn encoders once they have been out for `reverify_after` seconds."""
        while True:
            await asyncio.sleep(min(poll, self.reverify_after))
            for encoder, since in list(self._withdrawn_at.items()):
                if time.monotonic() - since < self.reverify_after:
                    continue
                why = await reverify(encoder)
                if why is None:
                    await self._set(encoder, True, "re-verified")
                else:
                    self._withdrawn_at[encoder] = time.monotonic()
                    log.info("encoder %s still failing: %s", encoder, why)
