"""How an attempt ends: completed, cancelled, interrupted, retried or failed, then ack/nak/term.

The terminal event is journalled and PubAck'd before the ack or term, so an acked job always has
its outcome on the events stream; the ack or term is then confirmed by the server and retried
until it is (daemon.job.lease.settle), through outages and reconnects, so a lost ack does not
hand a finished job to another node. Retries and hand-backs nak without waiting. An attempt
whose job another attempt already ended (daemon.ops.outputs.AlreadyEnded, or a failure found to
follow such an end) leaves no output, no failure and no second terminal event.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from nats.aio.msg import Msg

from daemon.job.deps import JobDeps, base_fields
from daemon.job.failures import runs_so_far
from daemon.job.handle import JobHandle, StopKind
from daemon.job.lease import Lease, settle
from daemon.job.partials import remove_stale_partials
from daemon.job.retry import Nak, Outcome, Term, decide
from daemon.ops.outputs import AlreadyEnded
from schemas.events import (
    Cancelled,
    Completed,
    ErrorKind,
    Event,
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
    handle: JobHandle,
    result: JobResult | None,
    error: BaseException | None,
    deps: JobDeps,
    lease: Lease | None = None,
    *,
    started: Event | None = None,
) -> None:
    """`started`: the `started` event of an operation that ran no command and succeeded, not
    journalled yet: it goes out with the outcome, in the same commit."""
    job_id, attempt = handle.job_id, handle.attempt
    wall = handle.now() - handle.started_at

    def base() -> dict[str, Any]:
        return base_fields(deps, job_id, attempt, handle.tenant)

    if result is not None:
        outputs = [OutputWritten(**base(), output=o) for o in result.outputs]
        done = Completed(**base(), result=result)
        # One commit for the outcome and what leads up to it (in order): a commit each cost a
        # trip to the journal's thread.
        ahead = [*([started] if started is not None else []), *outputs]
        await deps.reporter.record_and_wait(job_id, "succeeded", done, before=ahead)
        # A crashed earlier attempt (on any node) may have left partials next to the output.
        await remove_stale_partials(spec, deps.cfg.allowed_roots)
        await _settle_end(msg, b"+ACK", handle, deps)
        deps.on_finished("completed", spec.pool, wall, result)
        return
    # A stop request ends the attempt however the operation surfaced it (JobCancelled, a killed
    # ffmpeg's exit code, CancelledError): the request decides, not the exception.
    stop = handle.stopped
    if stop is not None and stop.kind is StopKind.CANCEL:
        event = Cancelled(**base(), reason=stop.reason)
        await deps.reporter.record_and_wait(job_id, "cancelled", event)
        await _settle_end(msg, b"+TERM", handle, deps)
        deps.on_finished("cancelled", spec.pool, wall, None)
        return
    requeue = stop is not None and stop.kind < StopKind.TIMEOUT
    if requeue or isinstance(error, asyncio.CancelledError):
        # Drain deadline or shutdown: not the job's fault, so another node gets it at once.
        why = stop.reason if stop is not None and requeue else "node stopping"
        event_i = Interrupted(**base(), reason=why)
        await deps.reporter.record(job_id, "interrupted", event_i)
        await msg.nak()
        deps.on_finished("interrupted", spec.pool, wall, None)
        return
    assert error is not None
    # A failure of an attempt whose job another attempt already ended (e.g. that one's completion
    # removed this one's partial output) is no failure of the job: it is not reported as one.
    if not isinstance(error, AlreadyEnded) and lease is not None and not await lease.may_commit():
        error = AlreadyEnded()
    if isinstance(error, AlreadyEnded):  # the job's outcome is another attempt's: ack, quietly
        event_e = Interrupted(**base(), reason=str(error))
        await deps.reporter.record(job_id, "interrupted", event_e)
        await settle(msg)
        deps.on_finished("interrupted", spec.pool, wall, None)
        return
    kind, reason, exit_code, tail = _classify(error)
    cfg = deps.cfg
    ek = cast(ErrorKind, kind if kind in _KINDS else "transient")
    # Attempts count runs that failed, not deliveries: a hand-back used up none.
    failures = deps.failures
    before = await failures.failed_before(handle.tenant, job_id) if failures else None
    run = runs_so_far(before, attempt)
    verdict = decide(
        cast(Outcome, ek), run, spec.max_attempts, cfg.retry_base_delay, cfg.retry_max_delay
    )
    log.warning(
        "attempt %d (run %d) failed (%s): %s", attempt, run, kind, reason, extra={"job_id": job_id}
    )
    final = isinstance(verdict, Term)
    failed = Failed(
        **base(), reason=reason, error_kind=ek, final=final, exit_code=exit_code, stderr_tail=tail
    )
    if isinstance(verdict, Nak):
        if failures is not None:  # before the nak: the next run must see this failure
            await failures.record(handle.tenant, job_id, run)
        retry = Retrying(**base(), reason=reason, next_attempt=attempt + 1, delay_s=verdict.delay)
        await deps.reporter.record(job_id, "retrying", failed, retry)
        await msg.nak(delay=verdict.delay)
        deps.on_finished("retried", spec.pool, wall, None)
        return
    await deps.reporter.record_and_wait(job_id, "failed", failed)
    await _settle_end(msg, b"+TERM", handle, deps)
    deps.on_finished("failed", spec.pool, wall, None)


async def _settle_end(msg: Msg, verb: bytes, handle: JobHandle, deps: JobDeps) -> None:
    """Ack or term the message of an attempt that ended the job; once the server confirms it,
    the journal says so, so a restart does not settle it again (redelivery.py)."""
    if await settle(msg, verb):
        await deps.reporter.journal.settled(
            handle.job_id, handle.attempt, tenant=handle.tenant, durable=False
        )
