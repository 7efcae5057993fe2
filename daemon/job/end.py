"""How an attempt ends: completed, cancelled, interrupted, retried or failed, then ack/nak/term.

The terminal event is journalled and PubAck'd before `ack_sync` or `term`, so an acked job always
has its outcome on the events stream; retries and hand-backs nak without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from nats.aio.msg import Msg

from daemon.job.deps import HARD_TIMEOUT, JobDeps, base_fields
from daemon.job.partials import remove_stale_partials
from daemon.job.retry import Nak, Outcome, Term, decide
from daemon.job.running import RunningJob
from schemas.events import (
    Cancelled,
    Completed,
    ErrorKind,
    Failed,
    Interrupted,
    OutputWritten,
    Retrying,
)
from schemas.jobs import JobSpec
from schemas.results import JobResult

log = logging.getLogger("flotilla.job")
_KINDS = ("transient", "permanent", "timeout", "resource", "interrupted")


def _classify(error: BaseException) -> tuple[str, str, int | None, str]:
    """(kind, reason, exit code, stderr tail) from a `daemon.errors.JobError` or anything else."""
    if isinstance(error, TimeoutError):
        return "timeout", str(error), None, ""
    kind = str(getattr(error, "kind", "transient"))
    reason = str(getattr(error, "reason", "") or error or type(error).__name__)
    exit_code = getattr(error, "exit_code", None)
    tail = str(getattr(error, "stderr_tail", "") or "")[-16000:]
    return kind, reason[:512], exit_code if isinstance(exit_code, int) else None, tail


async def finish(
    msg: Msg,
    spec: JobSpec,
    attempt: int,
    handle: RunningJob,
    result: JobResult | None,
    error: BaseException | None,
    wall: float,
    deps: JobDeps,
) -> None:
    job_id = spec.job_id

    def base() -> dict[str, Any]:
        return base_fields(deps, job_id, attempt)

    if result is not None:
        outputs = [OutputWritten(**base(), output=o) for o in result.outputs]
        done = Completed(**base(), result=result)
        await deps.reporter.record(job_id, None, *outputs)
        await deps.reporter.record_and_wait(job_id, "succeeded", done)
        # A crashed earlier attempt (on any node) may have left partials next to the output.
        await remove_stale_partials(spec, deps.cfg.allowed_roots)
        await msg.ack_sync()
        deps.on_finished("completed", spec.pool, wall, result)
        return
    # A stop request ends the attempt however the operation surfaced it (JobCancelled, a killed
    # ffmpeg's exit code, CancelledError): the request decides, not the exception.
    stopped = handle.stop_reason is not None and handle.stop_reason != HARD_TIMEOUT
    if stopped and handle.cancel_requested:
        event = Cancelled(**base(), reason=handle.stop_reason or "cancelled")
        await deps.reporter.record_and_wait(job_id, "cancelled", event)
        await msg.term()
        deps.on_finished("cancelled", spec.pool, wall, None)
        return
    if stopped or isinstance(error, asyncio.CancelledError):
        # Drain deadline or shutdown: not the job's fault, so another node gets it at once.
        event_i = Interrupted(**base(), reason=handle.stop_reason or "node stopping")
        await deps.reporter.record(job_id, "interrupted", event_i)
        await msg.nak()
        deps.on_finished("interrupted", spec.pool, wall, None)
        return
    assert error is not None
    kind, reason, exit_code, tail = _classify(error)
    cfg = deps.cfg
    ek = cast(ErrorKind, kind if kind in _KINDS else "transient")
    verdict = decide(
        cast(Outcome, ek), attempt, spec.max_attempts, cfg.retry_base_delay, cfg.retry_max_delay
    )
    log.warning("attempt %d failed (%s): %s", attempt, kind, reason, extra={"job_id": job_id})
    final = isinstance(verdict, Term)
    failed = Failed(
        **base(), reason=reason, error_kind=ek, final=final, exit_code=exit_code, stderr_tail=tail
    )
    if isinstance(verdict, Nak):
        retry = Retrying(**base(), reason=reason, next_attempt=attempt + 1, delay_s=verdict.delay)
        await deps.reporter.record(job_id, "retrying", failed, retry)
        await msg.nak(delay=verdict.delay)
        deps.on_finished("retried", spec.pool, wall, None)
        return
    await deps.reporter.record_and_wait(job_id, "failed", failed)
    await msg.term()
    deps.on_finished("failed", spec.pool, wall, None)
