"""Operations: one module per operation, dispatched on the job's tagged operation.

Each operation module exposes one coroutine taking the JobContext and returning a JobResult;
failures are the `daemon.errors` classes.
"""

from __future__ import annotations

from typing import assert_never

from daemon.media.access import publish_outputs
from daemon.ops import analyze, canary, concat, package, probe_op, thumbnail, transcode
from daemon.ops.context import JobContext
from daemon.ops.pertitle import run as pertitle
from schemas.operations import (
    Analyze,
    Canary,
    Concat,
    Package,
    PerTitle,
    Probe,
    Thumbnail,
    Transcode,
)
from schemas.results import JobResult

__all__ = ["JobContext", "run_operation"]


async def run_operation(ctx: JobContext) -> JobResult:
    """Run one attempt; JobError subclasses, JobCancelled or JobTimeout on the way out."""
    ctx.handle.arm(ctx.spec.timeouts.hard_seconds)
    result = await _dispatch(ctx)
    await publish_outputs(ctx, result)  # nats-obj:// outputs leave only after success
    return result


async def _dispatch(ctx: JobContext) -> JobResult:
    match ctx.spec.operation:
        case Transcode() as op:
            return await transcode.run(ctx, op)
        case Canary() as op:
            return await canary.run(ctx, op)
        case Analyze():
            return await analyze.run_analyze(ctx)
        case Package():
            return await package.run_package(ctx)
        case PerTitle():
            return await pertitle.run_pertitle(ctx)
        case Probe():
            return await probe_op.run_probe(ctx)
        case Thumbnail():
            return await thumbnail.run_thumbnail(ctx)
        case Concat():
            return await concat.run_concat(ctx)
        case other:
            assert_never(other)
