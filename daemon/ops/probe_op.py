"""The probe operation: describe the input; `deep: true` also decodes every frame (health check).

The deep pass starts beside the probe (its command needs none) and decodes into the null muxer
through the runner (so cancel, pause and the hard timeout apply), counting decode errors from an
FFREPORT log at error level written to scratch: the runner's stderr tail is bounded, the report
file is not, so every error is counted.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiofiles

from daemon.ffmpeg.progress import Duration
from daemon.ffmpeg.run import RunResult, run_ffmpeg
from daemon.media.access import local_input, open_input, probe_input
from daemon.media.paths import ffmpeg_arg
from daemon.ops.beside import stop
from daemon.ops.context import JobContext
from schemas.operations import Probe
from schemas.results import JobResult, ProbeInfo

#: How many decode-error lines the result carries (the count covers all of them).
MAX_ERROR_LINES = 20
_ERROR_TAGS = ("[error]", "[fatal]")


async def run_probe(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    op = ctx.spec.operation
    assert isinstance(op, Probe)
    if op.deep:
        info = await _probe_beside_decode(ctx)
    else:
        _, info = await open_input(ctx, ctx.spec.input)
    wall = time.monotonic() - started
    media = info.duration_s
    return JobResult(
        wall_seconds=wall,
        media_seconds=media,
        realtime_factor=round(media / wall, 3) if op.deep and media and wall > 0 else None,
        input_size_bytes=info.size_bytes,
        probe=info,
    )


async def _probe_beside_decode(ctx: JobContext) -> ProbeInfo:
    """The deep pass's command does not depend on the probe, so the decode starts beside it
    (daemon.ops.beside); a refusal of the probe stops the decode."""
    src, size = await local_input(ctx, ctx.spec.input)
    learnt: list[float | None] = []  # the probed duration, for progress once known

    def duration() -> float | None:
        return learnt[0] if learnt else None

    decode = asyncio.create_task(decode_all(ctx, src, duration))  # its spawn first
    probing = asyncio.create_task(probe_input(ctx, src, size, ctx.spec.input))
    try:
        info = await probing
        learnt.append(info.duration_s)
        lines, _ = await decode
    finally:
        for task in (decode, probing):
            await stop(task)
    info.decode_errors = len(lines)
    info.decode_error_lines = lines[:MAX_ERROR_LINES]
    return info


async def decode_all(
    ctx: JobContext,
    src: Path,
    duration_s: Duration,
    span: tuple[float, float] = (0.0, 100.0),
) -> tuple[list[str], RunResult]:
    """Decode every video and audio stream of `src`: the error lines logged, and the run (its
    last progress block counts the video frames decoded)."""
    report = ctx.scratch / "deep-probe.log"
    args = ["-threads", str(ctx.threads), *ctx.media.guard(), "-i", ffmpeg_arg(src)]
    args += ["-map", "0:v?", "-map", "0:a?", "-f", "null", "-"]
    await ctx.announce(None, args)
    run = await run_ffmpeg(
        ctx.tools.ffmpeg,
        args,
        control=ctx.handle,
        on_progress=ctx.progress,
        duration_s=duration_s,
        span=span,
        progress_interval=ctx.progress_interval,
        env={"FFREPORT": f"file={_report_escape(str(report))}:level=16"},
    )
    return await _error_lines(report), run


async def _error_lines(report: Path) -> list[str]:
    try:
        async with aiofiles.open(report, encoding="utf-8", errors="replace") as f:
            text = await f.read()
    except FileNotFoundError:
        return []
    return [_clean(line) for line in text.splitlines() if any(t in line for t in _ERROR_TAGS)]


def _report_escape(path: str) -> str:
    # FFREPORT separates key=value pairs with ':' and escapes with '\'.
    return path.replace("\\", "\\\\").replace(":", "\\:")


def _clean(line: str) -> str:
    # Drop the "[h264 @ 0x55...]" address: it differs run to run and says nothing to a reader.
    head, sep, rest = line.partition("] ")
    return rest if sep and " @ 0x" in head else line
