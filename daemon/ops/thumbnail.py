"""The thumbnail operation: one frame at `at_seconds`, or a sprite sheet of N tiles + WebVTT index.

The sprite samples the whole duration evenly (`fps=N/duration`), scales each frame to `width`
(height from the source aspect, even), and tiles them COLUMNS x ROWS into one image. The index,
`<output>.vtt`, maps each tile's time span to its `#xywh=` region of the sheet, the form players'
seek-bar previews read. Both files are written under temporary names and moved into place.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from urllib.parse import quote

import aiofiles

from daemon.errors import InputError, InvalidJob
from daemon.ffmpeg.run import run_ffmpeg
from daemon.media.access import local_input, open_input, output_path, probe_input
from daemon.media.mp4head import read_mp4_head
from daemon.media.paths import ffmpeg_arg
from daemon.ops.beside import stop
from daemon.ops.context import JobContext
from daemon.ops.outputs import OutputSet
from schemas.operations import Thumbnail
from schemas.results import JobResult, OutputFile, ProbeInfo

ENCODERS = {"jpg": ["-c:v", "mjpeg", "-q:v", "3"], "png": ["-c:v", "png"]}
ENCODERS["webp"] = ["-c:v", "libwebp", "-quality", "80"]


async def run_thumbnail(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    spec, op = ctx.spec, ctx.spec.operation
    assert isinstance(op, Thumbnail) and spec.output is not None  # JobSpec requires an output
    dest = await output_path(ctx, spec.output)
    if op.sprite:
        return await _sprite(ctx, op, dest, started)
    src, info = await open_input(ctx, spec.input)
    if src == dest:
        raise InvalidJob("output is the same file as the input")
    src_w, src_h, duration = _video_facts(info)
    async with OutputSet(ctx.job_key, ctx.attempt, ctx.may_commit) as outputs:
        partial = await outputs.stage(dest, uri=spec.output)
        if duration is not None and op.at_seconds >= duration:
            raise InvalidJob(f"at_seconds {op.at_seconds:g} is past the end ({duration:g} s)")
        seek = ["-ss", f"{op.at_seconds!r}"]
        vf = f"scale={op.width}:{_tile_height(op, src_w, src_h)}"
        await _render(ctx, op, src, partial, vf, seek, None)
        ctx.handle.check()
        files = await outputs.commit()
    return _result(started, duration, info, files)


def _result(
    started: float, duration: float | None, info: ProbeInfo, files: list[OutputFile]
) -> JobResult:
    return JobResult(
        wall_seconds=time.monotonic() - started,
        media_seconds=duration,
        input_size_bytes=info.size_bytes,
        outputs=files,
    )


async def _sprite(ctx: JobContext, op: Thumbnail, dest: Path, started: float) -> JobResult:
    """The sheet. Where the input's MP4/MOV header tells its size and duration, the render
    starts on those beside the probe (daemon.ops.beside), and is kept when the probe agrees:
    the same tile size, and a duration within a tenth of one tile's span (no tile's sample
    moves by more). The index is always written from the probe's duration."""
    spec = ctx.spec
    src, size = await local_input(ctx, spec.input)
    if src == dest:
        raise InvalidJob("output is the same file as the input")
    head = await asyncio.to_thread(read_mp4_head, src)
    guess = None
    if head is not None:
        # ffprobe reports the video stream's duration; `ffmpeg -i` only the file's.
        span = head.track_duration_s if ctx.tools.ffprobe is not None else head.movie_duration_s
        guess = (head.width, head.height, span)
    render: asyncio.Task[None] | None = None
    probing: asyncio.Task[ProbeInfo] | None = None
    async with OutputSet(ctx.job_key, ctx.attempt, ctx.may_commit) as outputs:
        partial = await outputs.stage(dest, uri=spec.output)
        vtt = dest.with_name(dest.name + ".vtt")
        vtt_partial = await outputs.stage(vtt, role="index")
        try:  # both runs end before the output set removes what they wrote
            if guess is not None:  # its task first: its spawn, not the probe's, comes first
                render = asyncio.create_task(_render_sheet(ctx, op, src, partial, *guess))
            probing = asyncio.create_task(probe_input(ctx, src, size, spec.input))
            info = await probing
            facts = _video_facts(info)
            duration = facts[2]
            if duration is None or duration <= 0:
                raise InputError("a sprite sheet needs an input with a known duration")
            if render is not None and not _agrees(op, guess, facts):
                await stop(render)
                render = None
            if render is None:
                await _render_sheet(ctx, op, src, partial, facts[0], facts[1], duration)
            else:
                await render
        finally:
            for task in (render, probing):
                if task is not None:
                    await stop(task)
        tile_h = _tile_height(op, facts[0], facts[1])
        await _write_vtt(vtt_partial, dest.name, op, duration, tile_h)
        ctx.handle.check()
        files = await outputs.commit()
    return _result(started, duration, info, files)


def _agrees(
    op: Thumbnail, guess: tuple[int, int, float] | None, facts: tuple[int, int, float | None]
) -> bool:
    if guess is None or facts[2] is None:
        return False
    same_tiles = _tile_height(op, guess[0], guess[1]) == _tile_height(op, facts[0], facts[1])
    return same_tiles and abs(guess[2] - facts[2]) <= facts[2] / (10 * op.tiles)


async def _render_sheet(
    ctx: JobContext, op: Thumbnail, src: Path, partial: Path, width: int, height: int, span: float
) -> None:
    rows = math.ceil(op.tiles / op.columns)
    tile_h = _tile_height(op, width, height)
    vf = f"fps={op.tiles}/{span!r},scale={op.width}:{tile_h},tile={op.columns}x{rows}"
    await _render(ctx, op, src, partial, vf, [], span)


def _tile_height(op: Thumbnail, src_w: int, src_h: int) -> int:
    return max(2, round(op.width * src_h / src_w / 2) * 2)


def _video_facts(info: ProbeInfo) -> tuple[int, int, float | None]:
    for stream in info.streams:
        if stream.type == "video" and stream.width and stream.height:
            return stream.width, stream.height, stream.duration_s or info.duration_s
    raise InputError("input has no video stream with a known size")


async def _render(
    ctx: JobContext,
    op: Thumbnail,
    src: Path,
    partial: Path,
    vf: str,
    seek: list[str],
    duration: float | None,
) -> None:
    # -ss before -i: a fast keyframe seek, then ffmpeg decodes up to the exact time.
    args = ["-threads", str(ctx.threads), *ctx.media.guard(), *seek]
    args += ["-i", ffmpeg_arg(src), "-map", "0:v:0", "-vf", vf, "-frames:v", "1"]
    args += [*ENCODERS[op.format], "-f", "image2", "-update", "1", ffmpeg_arg(partial)]
    await ctx.announce(None, args)
    await run_ffmpeg(
        ctx.tools.ffmpeg,
        args,
        control=ctx.handle,
        on_progress=ctx.progress,
        duration_s=duration,
        progress_interval=ctx.progress_interval,
    )
    if not await asyncio.to_thread(_nonempty, partial):
        raise InputError("ffmpeg produced no frame (is the time past the last frame?)")


def vtt_cues(image: str, op: Thumbnail, duration: float, tile_h: int) -> str:
    """The WebVTT index: tile i covers [i, i+1) * duration / tiles, left to right, top down."""
    step = duration / op.tiles
    lines = ["WEBVTT", ""]
    for i in range(op.tiles):
        x, y = (i % op.columns) * op.width, (i // op.columns) * tile_h
        end = duration if i + 1 == op.tiles else (i + 1) * step
        lines += [
            f"{_ts(i * step)} --> {_ts(end)}",
            f"{image}#xywh={x},{y},{op.width},{tile_h}",
            "",
        ]
    return "\n".join(lines)


async def _write_vtt(path: Path, image: str, op: Thumbnail, duration: float, tile_h: int) -> None:
    # The image sits next to the index, so a relative, percent-safe reference is enough.
    async with aiofiles.open(path, "w", encoding="utf-8") as f:
        await f.write(vtt_cues(quote(image), op, duration, tile_h))


def _ts(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"


def _nonempty(path: Path) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False
