"""One job's life, from the delivered message to its ack, nak or term.

Order matters for "nothing lost, nothing twice": every state is journalled (with its events, in
one transaction) before it is acted on, and a message is acked or termed only after its terminal
event has been PubAck'd. While the job runs, `+WPI` goes out every ack_wait/4 so JetStream keeps it.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid

from nats.aio.msg import Msg

from daemon.job.deps import HARD_TIMEOUT, Attempt, JobDeps, base_fields
from daemon.job.end import finish
from daemon.job.requirements import unmet_requirement
from daemon.job.retry import backoff
from daemon.job.running import RunningJob, RunningJobs
from daemon.job.watch import WatchHooks, progress_event, watch_job
from schemas.codec import DecodeError, Decoder
from schemas.events import (
    Accepted,
    Failed,
    HandedBack,
    Started,
)
from schemas.jobs import JobSpec
from schemas.results import JobResult

log = logging.getLogger("flotilla.job")
JOB_DECODER: Decoder[JobSpec] = Decoder(JobSpec)


async def run_job(msg: Msg, pool: str, priority: str, deps: JobDeps) -> None:
    """Never raises for a job's own failure; the message always leaves with a disposition."""
    attempt = msg.metadata.num_delivered
    job_id = msg.subject.rsplit(".", 1)[-1]
    try:
        spec = JOB_DECODER.decode(msg.data)
        if (spec.pool, spec.priority, spec.job_id) != (pool, priority, job_id):
            raise DecodeError("JobSpec", f"subject says {pool}/{priority}/{job_id}")
    except DecodeError as exc:
        log.warning("invalid job: %s", exc, extra={"job_id": job_id})
        failed = Failed(
            **base_fields(deps, job_id, attempt),
            reason=str(exc)[:512],
            error_kind="permanent",
            final=True,
        )
        await deps.reporter.record_and_wait(job_id, "failed", failed)
        await msg.term()
        deps.on_finished("invalid", pool, 0.0, None)
        return
    reason = unmet_requirement(spec, deps.node)
    if reason is not None:
        delay = backoff(attempt, deps.cfg.handback_delay, deps.cfg.handback_max_delay)
        log.info("handing back: %s", reason, extra={"job_id": job_id})
        event = HandedBack(**base_fields(deps, job_id, attempt), reason=reason, delay_s=delay)
        await deps.reporter.record(job_id, "handed_back", event)
        await msg.nak(delay=delay)
        return
    await _run_accepted(msg, spec, attempt, deps)


async def _run_accepted(msg: Msg, spec: JobSpec, attempt: int, deps: JobDeps) -> None:
    cfg, job_id = deps.cfg, spec.job_id
    submitted = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else None
    accepted = Accepted(
        **base_fields(deps, job_id, attempt),
        pool=spec.pool,
        priority=spec.priority,
        tenant=spec.tenant,
        operation=spec.operation_name,
        stream_seq=msg.metadata.sequence.stream,
        submitted_ts=submitted,
        spec=spec,
    )
    await deps.reporter.record(job_id, "received", accepted, spec=msg.data)
    scratch = cfg.work_dir / f"{job_id}.{attempt}.{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)
    handle = RunningJob(job_id=job_id, pool=spec.pool)
    deps.running.add(handle)
    watcher = watch_job(
        handle, _watch(msg, spec, attempt, handle, deps), ack_wait=cfg.ack_wait,
        pause_limit=cfg.pause_limit, soft_s=spec.timeouts.soft_seconds,
    )  # fmt: skip
    keepalive = asyncio.create_task(watcher, name=f"watch-{job_id}")
    started_wall = time.monotonic()
    try:
        att = Attempt(spec, attempt, scratch, handle, frozenset(deps.node.withdrawn_encoders))

        async def on_command(encoder: str | None, argv: list[str]) -> None:
            # `started` names the encoder and command, so it waits for the first ffmpeg run.
            if not handle.started:
                handle.started = True
                event = Started(**base_fields(deps, job_id, attempt), encoder=encoder,
                                command=argv)  # fmt: skip
                await deps.reporter.record(job_id, "running", event)
                if handle.slow:  # the soft timeout passed before the first ffmpeg run
                    await _report_slow(spec, attempt, handle, deps)

        att.on_command = on_command
        result, error = await _execute(att, deps)
        if not handle.started:  # an operation that ran no ffmpeg (or failed before it)
            await on_command(None, [])
        if deps.encoder_health is not None:
            used = result.encoder if result is not None else None
            await deps.encoder_health.job_done(att.encoder_failures, used)
        wall = time.monotonic() - started_wall
        await finish(msg, spec, attempt, handle, result, error, wall, deps)
    finally:
        keepalive.cancel()
        deps.running.remove(job_id)
        await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)


async def _execute(att: Attempt, deps: JobDeps) -> tuple[JobResult | None, BaseException | None]:
    """Run the operation under soft and hard timeouts; a stop request cancels its task."""
    if att.handle.stop_reason is not None:  # cancelled or drained before it started
        return None, asyncio.CancelledError(att.handle.stop_reason)
    op = asyncio.create_task(deps.run_operation(att), name=f"op-{att.spec.job_id}")
    att.handle.op_task = op
    t = att.spec.timeouts
    # The runner enforces the hard timeout itself (paused time excluded, see RunControl); this
    # is the backstop for an operation that ignores it, so it allows for a maximal pause. The
    # soft timeout is the watcher's (daemon.job.watch): it only reports.
    hard = t.hard_seconds + deps.cfg.pause_limit + 30.0
    done, _ = await asyncio.wait({op}, timeout=hard)
    if not done:
        att.handle.stop_reason = HARD_TIMEOUT
        RunningJobs._interrupt(att.handle)
        await asyncio.wait({op})
        return None, TimeoutError(f"hard timeout after {t.hard_seconds:.0f}s")
    if op.cancelled():
        return None, asyncio.CancelledError(att.handle.stop_reason or "stopped")
    exc = op.exception()
    return (None, exc) if exc is not None else (op.result(), None)


async def _report_slow(spec: JobSpec, attempt: int, handle: RunningJob, deps: JobDeps) -> None:
    # The latest progress again, now flagged: a bare event would blank the job's progress.
    update = handle.last_progress
    event = progress_event(deps.cfg.node_id, spec.job_id, attempt, handle, update)
    await deps.reporter.record(None, None, event)


def _watch(msg: Msg, spec: JobSpec, attempt: int, handle: RunningJob, deps: JobDeps) -> WatchHooks:
    async def slow() -> None:
        deps.on_slow(spec.pool)
        if handle.started:  # else `started` reports it, in order
            await _report_slow(spec, attempt, handle, deps)

    return WatchHooks(
        in_progress=msg.in_progress,
        resume=lambda: deps.running.pause(spec.job_id, False),
        slow=slow,
    )
