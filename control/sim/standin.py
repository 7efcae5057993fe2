"""The timed stand-in for ffmpeg: what a node of `flotilla sim` runs instead of an operation.

It takes the job's simulated length from `metadata["sim_seconds"]`, announces its command (the
job's `started` event), sleeps through it in `progress_interval` steps on the job's handle (so
pause, cancel and the hard timeout act on it as on ffmpeg), sends a progress update per step as
ffmpeg's `-progress` blocks would, and returns the result a transcode returns: one output file.
Nothing is read or written: the output's size and digest are made up, derived from the job id.
"""

from __future__ import annotations

import hashlib
import time

from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ops.context import JobContext
from schemas.results import JobResult, OutputFile

#: Simulated frames per second of media, and media seconds per wall second (the speed).
FPS = 25.0
SPEED = 2.0
#: Used when a job carries no `sim_seconds`.
DEFAULT_SECONDS = 1.0


def sim_seconds(ctx: JobContext) -> float:
    try:
        return max(0.0, float(ctx.spec.metadata.get("sim_seconds", DEFAULT_SECONDS)))
    except ValueError:
        return DEFAULT_SECONDS


async def run_standin(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    ctx.handle.arm(ctx.spec.timeouts.hard_seconds)
    length = sim_seconds(ctx)
    media = length * SPEED
    output = ctx.spec.output or ""
    await ctx.announce("libx264", ["-i", ctx.spec.input, "-c:v", "libx264", output])
    done = 0.0
    step = max(0.05, ctx.progress_interval)
    while done < length:
        chunk = min(step, length - done)
        await ctx.handle.sleep(chunk)  # paused time does not count, as with ffmpeg stopped
        done += chunk
        out_time = done * SPEED
        await ctx.progress(
            ProgressUpdate(
                frame=int(out_time * FPS), fps=FPS * SPEED, out_time_s=out_time, speed=SPEED,
                percent=round(100.0 * done / length, 2) if length else 100.0,
            )
        )  # fmt: skip
    ctx.handle.check()
    await ctx.progress(ProgressUpdate(frame=int(media * FPS), fps=FPS * SPEED, out_time_s=media,
                                      speed=SPEED, percent=100.0, ended=True))  # fmt: skip
    digest = hashlib.sha256(ctx.spec.job_id.encode()).hexdigest()
    size = 200_000 + int(media * 250_000)
    wall = time.monotonic() - started
    return JobResult(
        wall_seconds=wall,
        media_seconds=media,
        realtime_factor=round(media / wall, 3) if wall > 0 else None,
        encoder="libx264",
        input_size_bytes=size * 3,
        outputs=[OutputFile(uri=output, size_bytes=size, sha256=digest)] if output else [],
    )
