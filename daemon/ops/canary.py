"""The canary operation: no ffmpeg, an optional sleep; proves the dispatch path end to end."""

from __future__ import annotations

import time

from daemon.ops.context import JobContext
from schemas.operations import Canary
from schemas.results import JobResult


async def run(ctx: JobContext, op: Canary) -> JobResult:
    started = time.monotonic()
    if op.sleep_seconds > 0:
        # Honours cancel, pause and the hard timeout like an ffmpeg run would.
        await ctx.handle.sleep(op.sleep_seconds)
    ctx.handle.check()
    return JobResult(wall_seconds=time.monotonic() - started)
