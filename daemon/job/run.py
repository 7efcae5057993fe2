"""One job's life, from the delivered message to its ack, nak or term.

Order matters for "nothing lost, nothing twice": every state is journalled (with its events, in
one transaction) before it is acted on, and a message is acked or termed only after its terminal
event has been PubAck'd. While the job runs, `+WPI` goes out every ack_wait/4 so JetStream keeps it.

A job that passes its checks goes accept (journalled, scratch dir, its handle registered) ->
execute (the operation, reached through the handle) -> finish (daemon.job.end: event, then ack).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from daemon.job.admit import check_msg_id, check_subject, reported_id, reported_tenant
from daemon.job.deps import JobDeps, base_fields
from daemon.job.end import finish
from daemon.job.endquery import settle_if_ended_elsewhere
from daemon.job.handle import JobHandle, StopKind
from daemon.job.lease import Lease
from daemon.job.redelivery import settle_if_ended
from daemon.job.requirements import unmet_requirement
from daemon.job.retry import backoff
from daemon.job.watch import WatchHooks, progress_event, watch_job
from daemon.journal.deliveries import Delivery
from daemon.ops.context import JobContext
from daemon.ops.outputs import job_key
from daemon.pull.slots import hand_over_slot
from schemas.codec import DecodeError, Decoder
from schemas.events import (
    Accepted,
    Failed,
    HandedBack,
    Started,
)
from schemas.jobs import JobSpec
from schemas.operations import Canary
from schemas.results import JobResult

log = logging.getLogger("flotilla.job")
JOB_DECODER: Decoder[JobSpec] = Decoder(JobSpec)


async def run_job(msg: Msg, pool: str, priority: str, deps: JobDeps) -> None:
    """Never raises for a job's own failure; the message always leaves with a disposition."""
    attempt = msg.metadata.num_delivered
    job_id = reported_id(msg.subject.rsplit(".", 1)[-1], msg.metadata.sequence.stream)
    spec: JobSpec | None = None
    try:
        spec = JOB_DECODER.decode(msg.data)
        check_subject(spec, msg.subject, pool, priority)
        check_msg_id(spec, (msg.headers or {}).get("Nats-Msg-Id"))
    except DecodeError as exc:
        tenant = reported_tenant(msg.subject, spec)
        log.warning("invalid job: %s", exc, extra={"job_id": job_id})
        failed = Failed(
            **base_fields(deps, job_id, attempt, tenant),
            reason=str(exc)[:512],
            error_kind="permanent",
            final=True,
        )
        await deps.reporter.record_and_wait(job_id, "failed", failed)
        await msg.term()
        deps.on_finished("invalid", pool, 0.0, None)
        return
    # Past check_subject, the body's tenant is the subject's (or, stored under the version 1
    # subject, the only one there is).
    tenant = spec.tenant
    # A first delivery has had no attempt anywhere, so none can have ended here: no lookup.
    redelivered = attempt > 1
    if redelivered and await _adopted(msg, tenant, job_id, deps):
        return
    if redelivered and await settle_if_ended(msg, tenant, job_id, deps.reporter):
        return  # its ack was lost: not twice
    if redelivered and await settle_if_ended_elsewhere(msg, tenant, job_id, deps.ask_ended):
        deps.on_finished("ended_elsewhere", pool, 0.0, None)
        return  # the node that ended it lost its ack and stayed away: not twice
    reason = unmet_requirement(spec, deps.node)
    if reason is not None:
        # Jittered: a node that hands a job back polls again in step with the job's return, so
        # with a fixed delay it would win the job again and again, ahead of the node that can
        # run it, until max_deliver ends the job (test_hand_backs_do_not_use_up_attempts).
        delay = backoff(attempt, deps.cfg.handback_delay, deps.cfg.handback_max_delay)
        delay = round(delay * random.uniform(0.5, 1.5), 3)
        log.info("handing back: %s", reason, extra={"job_id": job_id})
        event = HandedBack(**base_fields(deps, job_id, attempt, tenant), reason=reason,
                           delay_s=delay)  # fmt: skip
        await deps.reporter.record(job_id, "handed_back", event)
        await msg.nak(delay=delay)
        return
    await _run_accepted(msg, spec, attempt, deps)


async def _adopted(msg: Msg, tenant: str, job_id: str, deps: JobDeps) -> bool:
    """A redelivery of a job this node still runs or settles goes to that attempt's lease."""
    lease = deps.leases.get((tenant, job_id))
    if lease is None or not lease.adopt(msg):
        return False
    log.info("redelivered while running here: the running attempt keeps it",
             extra={"job_id": job_id})  # fmt: skip
    # Confirms the lease under the new delivery now, not a keep-alive period later; a lost one
    # is the watcher's to repeat.
    with contextlib.suppress(NatsError, TimeoutError, OSError):
        await lease.keep_alive()
    return True


async def _run_accepted(msg: Msg, spec: JobSpec, attempt: int, deps: JobDeps) -> None:
    lease = Lease(msg, deps.cfg.ack_wait, journal=deps.reporter.journal, job_id=spec.job_id,
                  attempt=attempt, tenant=spec.tenant)  # fmt: skip
    key = (spec.tenant, spec.job_id)
    deps.leases[key] = lease
    try:
        handle, scratch = await _accept(msg, spec, attempt, deps, lease)
        keepalive = _start_watcher(lease, spec, handle, deps)
        try:
            result, error, started = await _execute(spec, handle, scratch, deps, lease)
            await finish(msg, spec, handle, result, error, deps, lease, started=started)
        finally:
            keepalive.cancel()
            deps.running.remove(handle)
            if _needs_scratch(spec):
                await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
    finally:
        if deps.leases.get(key) is lease:
            del deps.leases[key]


async def _accept(
    msg: Msg, spec: JobSpec, attempt: int, deps: JobDeps, lease: Lease
) -> tuple[JobHandle, Path]:
    """Journal the job as received (with its delivery: daemon.job.redelivery reads it), make its
    scratch dir and register its handle."""
    submitted = msg.metadata.timestamp.timestamp() if msg.metadata.timestamp else None
    accepted = Accepted(
        **base_fields(deps, spec.job_id, attempt, spec.tenant),
        pool=spec.pool,
        priority=spec.priority,
        operation=spec.operation_name,
        stream_seq=msg.metadata.sequence.stream,
        submitted_ts=submitted,
        spec=spec,
    )
    delivery = Delivery(spec.job_id, attempt, msg.metadata.sequence.stream, msg.reply,
                        lease.alive_at, spec.tenant)  # fmt: skip
    # Two tenants' jobs of one id may run here at once: the dir is named by both.
    key = job_key(spec.tenant, spec.job_id)
    scratch = deps.cfg.work_dir / f"{key}.{attempt}.{uuid.uuid4().hex[:8]}"
    # The dir is made while the journal commits: a crash leaves at most an empty dir, and the
    # daemon clears work_dir at start anyway. Nothing runs before both are done.
    record = deps.reporter.record(spec.job_id, "received", accepted, spec=msg.data,
                                  delivery=delivery)  # fmt: skip
    steps: list[Coroutine[Any, Any, Any]] = [record]
    if _needs_scratch(spec):
        steps.append(asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True))
    done = await asyncio.gather(*steps, return_exceptions=True)
    for outcome in done:
        if isinstance(outcome, BaseException):
            await asyncio.to_thread(shutil.rmtree, scratch, ignore_errors=True)
            raise outcome
    handle = JobHandle(spec.job_id, spec.pool, attempt, tenant=spec.tenant)
    deps.running.add(handle)
    return handle, scratch


def _needs_scratch(spec: JobSpec) -> bool:
    """A canary touches no disk: no scratch dir is made or removed for it (two trips to a
    thread, most of what it cost the daemon beside the journal)."""
    return not isinstance(spec.operation, Canary)


async def _execute(
    spec: JobSpec, handle: JobHandle, scratch: Path, deps: JobDeps, lease: Lease
) -> tuple[JobResult | None, BaseException | None, Started | None]:
    """Run the operation in its context; tell encoder health how its encoders did. The third
    value is the `started` event of an operation that succeeded without running a command,
    left for `finish` to journal with the outcome."""

    async def on_command(encoder: str | None, argv: list[str]) -> None:
        # `started` names the encoder and command, so it waits for the first ffmpeg run.
        if not handle.started:
            handle.started = True
            event = Started(**base_fields(deps, handle.job_id, handle.attempt, handle.tenant),
                            encoder=encoder, command=argv)  # fmt: skip
            await deps.reporter.record(handle.job_id, "running", event)
            if handle.slow:  # the soft timeout passed before the first ffmpeg run
                await _report_slow(handle, deps)

    withdrawn = frozenset(deps.node.withdrawn_encoders)
    ctx = deps.new_context(handle, spec, scratch, withdrawn=withdrawn, on_command=on_command)
    ctx.may_commit = lease.may_commit  # outputs go into place only if no other attempt ended it
    result, error = await _run_operation(ctx, deps)
    # The operation is over: the next job may start while this one reports and settles, and
    # what reaches running jobs (cancel, pause, heartbeats, drain) no longer finds this one.
    deps.running.remove(handle)
    hand_over_slot()
    started: Started | None = None
    if not handle.started and result is not None and not handle.slow:
        # It ran no command and has succeeded (a canary): `started` goes out with the outcome,
        # one commit instead of two. It is stamped now, as it would have been.
        handle.started = True
        started = Started(**base_fields(deps, handle.job_id, handle.attempt, handle.tenant),
                          encoder=None, command=[])  # fmt: skip
    elif not handle.started:  # it failed before any ffmpeg run, or is reported slow
        await on_command(None, [])
    if deps.encoder_health is not None:
        used = result.encoder if result is not None else None
        await deps.encoder_health.job_done([e.encoder for e in ctx.encoder_failures], used)
    return result, error, started


async def _run_operation(
    ctx: JobContext, deps: JobDeps
) -> tuple[JobResult | None, BaseException | None]:
    """Run the operation under its hard timeout; a stop request cancels its task."""
    handle = ctx.handle
    if handle.stopped is not None:  # cancelled or drained before it started
        return None, asyncio.CancelledError(handle.stopped.reason)
    key = job_key(handle.tenant, handle.job_id)
    op = asyncio.create_task(deps.run_operation(ctx), name=f"op-{key}")
    handle.run_in(op)
    t = ctx.spec.timeouts
    # The handle enforces the hard timeout itself (paused time excluded); this is the backstop
    # for an operation that ignores it, so it allows for a maximal pause. The soft timeout is
    # the watcher's (daemon.job.watch): it only reports.
    hard = t.hard_seconds + deps.cfg.pause_limit + 30.0
    done, _ = await asyncio.wait({op}, timeout=hard)
    if not done:
        handle.stop(StopKind.TIMEOUT, "hard timeout")
        await asyncio.wait({op})
        return None, TimeoutError(f"hard timeout after {t.hard_seconds:.0f}s")
    if op.cancelled():
        stop = handle.stopped
        return None, asyncio.CancelledError(stop.reason if stop is not None else "stopped")
    exc = op.exception()
    return (None, exc) if exc is not None else (op.result(), None)


async def _report_slow(handle: JobHandle, deps: JobDeps) -> None:
    # The latest progress again, now flagged: a bare event would blank the job's progress.
    event = progress_event(deps.cfg.node_id, handle, handle.last_progress)
    await deps.reporter.record(None, None, event)


def _start_watcher(
    lease: Lease, spec: JobSpec, handle: JobHandle, deps: JobDeps
) -> asyncio.Task[None]:
    """The job's watcher, supervised until the job's end cancels it."""

    async def slow() -> None:
        deps.on_slow(spec.pool)
        if handle.started:  # else `started` reports it, in order
            await _report_slow(handle, deps)

    hooks = WatchHooks(in_progress=lease.keep_alive, slow=slow)
    cfg, soft = deps.cfg, spec.timeouts.soft_seconds

    def watch() -> Coroutine[Any, Any, None]:
        return watch_job(handle, hooks, ack_wait=cfg.ack_wait, pause_limit=cfg.pause_limit,
                         soft_s=soft)  # fmt: skip

    name = f"watch-{job_key(handle.tenant, handle.job_id)}"  # the supervisor counts by name
    # Never set: the job's end cancels the watcher, whatever it is doing.
    run = deps.supervisor.supervise(name, watch, asyncio.Event(), deps.watcher_policy)
    return asyncio.create_task(run, name=name)
