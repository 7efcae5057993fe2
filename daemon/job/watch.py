"""The watcher beside one running job: in-progress acks, the pause limit and the soft timeout.

One task per job, asleep until the next of three deadlines (or a pause/resume, which moves them):

- `+WPI` every ack_wait/4, paused or not, so JetStream never redelivers a job whose node lives.
- A pause is bounded by `pause_limit`: past it the job is resumed, not handed back. Resuming loses
  nothing (the encode so far is kept and no other node starts a duplicate), where handing back
  would throw the work away, and leaving ffmpeg stopped while acks stop would have JetStream
  redeliver the job while this node still holds a half-done encode of it.
- The soft timeout (active time: paused time excluded, like the hard timeout) is reported once, as
  a progress event with `slow=True` (later progress events keep the flag) and a metric; the job
  goes on. The hard timeout is the runner's (`JobHandle.arm`): it stops ffmpeg and fails the
  attempt, which the retry policy then retries or ends.

Every one of these reads the handle's single pause clock.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from daemon.ffmpeg.progress import ProgressUpdate
from daemon.job.handle import JobHandle
from daemon.journal.reporter import new_event_id, now
from schemas.events import Progress

log = logging.getLogger("flotilla.job")
#: Bound on the watcher's wake-ups: a job of 7 days at one wake-up per 50 ms stays under it.
_MAX_WAKES = 20_000_000


@dataclass
class WatchHooks:
    #: Tell JetStream the job is still being worked on (`msg.in_progress`).
    in_progress: Callable[[], Awaitable[None]]
    #: The soft timeout passed (once): report it.
    slow: Callable[[], Awaitable[None]]


async def watch_job(
    handle: JobHandle,
    hooks: WatchHooks,
    *,
    ack_wait: float,
    pause_limit: float,
    soft_s: float | None,
) -> None:
    """Until cancelled (the job's end cancels it)."""
    interval = max(0.2, ack_wait / 4)
    next_wpi = handle.now() + interval
    for _ in range(_MAX_WAKES):
        t = handle.now()
        if t >= next_wpi:
            next_wpi = t + interval
            with contextlib.suppress(Exception):  # NATS away: the next one goes after reconnect
                await hooks.in_progress()
        paused = handle.paused_since
        if paused is not None and t - paused >= pause_limit:
            log.warning(
                "paused past pause_limit (%.0f s): resuming", pause_limit,
                extra={"job_id": handle.job_id},
            )  # fmt: skip
            handle.resume()
            continue
        if soft_s is not None and not handle.slow and handle.active_seconds(t) >= soft_s:
            handle.slow = True
            log.warning("past its soft timeout (%.0f s)", soft_s, extra={"job_id": handle.job_id})
            await hooks.slow()
        wake = [next_wpi]
        if paused is not None:
            wake.append(paused + pause_limit)
        elif soft_s is not None and not handle.slow:
            wake.append(t + soft_s - handle.active_seconds(t))
        await handle.wait_changed(min(wake) - handle.now())


def progress_event(node_id: str, handle: JobHandle, update: ProgressUpdate | None) -> Progress:
    """A progress event from `update` (None: nothing measured yet) and the job's paused/slow."""
    u = update or ProgressUpdate()
    return Progress(
        event_id=new_event_id(), job_id=handle.job_id, tenant=handle.tenant, node_id=node_id,
        attempt=handle.attempt,
        ts=now(), percent=u.percent, fps=u.fps, speed=u.speed, out_time_s=u.out_time_s,
        frame=u.frame, paused=handle.paused, slow=handle.slow,
    )  # fmt: skip
