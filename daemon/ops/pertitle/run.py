"""The pertitle operation: a quality-targeted ladder, each rung at the highest CRF whose samples
reach the target quality (docs/pertitle.md).

1. Samples: one fast pass scores every frame's scene change (`select`'s scene score on a 160 px
   wide copy); `search.pick_samples` spreads the samples over the title, each at the
   busiest spot of its window. They are cut once into a lossless reel (args).
2. Per rung (rungs taller than the source are dropped): the reel is encoded at a CRF, scaled to
   the rung's size, and measured against the reel scaled (bicubic) to that same size: the
   quality of the rung as a rung, so the target means the same thing on every rung. The CRF
   search (`next_crf`, at most `max_probes` encodes) keeps the highest passing CRF. The fixed
   ladder's rung (`fixed_ladder_kbps`, the package operation's VBV) is encoded and measured on
   the same reel, its bitrate extrapolated to the title's length: the baseline.
3. Hull: each rung's chosen sample encode is measured again upscaled to the display size (the
   tallest rung the source allows) against the reel at that size; rungs off the upper convex
   hull of that quality over bitrate are dropped (they add no quality over a cheaper rung).
4. The kept rungs are encoded full length at their CRF (VBV-capped by `max_bitrate_kbps`), with
   a fixed GOP of `segment_seconds`, and each is measured against the whole source at its size.
   With `hls` they are copied into an HLS package, the source's text subtitle tracks becoming
   WebVTT renditions of it as in the package operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import EncoderError, InputError, InvalidJob
from daemon.ffmpeg.run import RunResult, run_ffmpeg
from daemon.media.access import open_input, output_path
from daemon.ops.analyze import plane_summary, psnr_scores
from daemon.ops.context import JobContext
from daemon.ops.ladder_args import SOFTWARE
from daemon.ops.outputs import check_gate, partial_path
from daemon.ops.package import add_hls_subtitles
from daemon.ops.pertitle.args import encode_args, hls_args, metric_args, reel_args, scene_args
from daemon.ops.pertitle.files import rung_name, seal_ladder
from daemon.ops.pertitle.search import (
    HullPoint,
    Probe,
    choose_crf,
    convex_hull,
    next_crf,
    parse_scene_scores,
    pick_samples,
)
from daemon.ops.subtitles import rendition_tracks
from daemon.ops.transcode_plan import HDR_NAMES
from daemon.ops.vmafpool import read_vmaf_log
from schemas.operations import PerTitle, PerTitleRung, fixed_ladder_kbps
from schemas.results import (
    JobResult,
    OutputFile,
    PerTitleReport,
    PerTitleRungReport,
    Rendition,
    StreamInfo,
)

#: Where the search starts: each encoder's own default CRF.
START_CRF = {"h264": 23.0, "hevc": 28.0}


@dataclass(frozen=True, slots=True)
class _Title:
    ctx: JobContext
    op: PerTitle
    src: Path
    reel: Path
    reel_seconds: float
    duration: float
    display: tuple[int, int]
    #: Text subtitle tracks that become WebVTT renditions of the HLS package.
    subtitles: tuple[StreamInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class _Searched:
    rung: PerTitleRung
    size: tuple[int, int]
    probes: list[Probe]
    crf: float
    reached: bool
    quality: float
    kbps: float
    display_quality: float
    fixed_kbps: int
    fixed_actual_kbps: float
    fixed_quality: float


async def run_pertitle(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    spec, op = ctx.spec, ctx.spec.operation
    assert isinstance(op, PerTitle) and spec.output is not None  # JobSpec requires an output
    dest = await output_path(ctx, spec.output)
    if "%" in str(dest):
        raise InvalidJob("the output directory name must not contain '%' (a muxer pattern)")
    if await asyncio.to_thread(dest.exists):
        raise InvalidJob(f"output {spec.output!r} already exists")
    _check_node(ctx, op)
    src, info = await open_input(ctx, spec.input)
    video = next((s for s in info.streams if s.type == "video" and s.height), None)
    if video is None or not video.height or not video.width:
        raise InputError("input has no video stream with a known size")
    if video.hdr in HDR_NAMES:  # 8-bit rungs would stay tagged HDR, and VMAF models are SDR
        raise InvalidJob(f"the input is {HDR_NAMES[video.hdr]}: a per-title ladder takes SDR "
                         "sources; tone-map it first (transcode with `hdr` 'tonemap')")  # fmt: skip
    duration = info.duration_s or video.duration_s
    if not duration:
        raise InputError("input has no known duration: samples cannot be placed")
    rungs = sorted((r for r in op.rungs if r.height <= video.height), key=lambda r: -r.height)
    dropped = [f"{r.height}p (source is {video.height}p)" for r in op.rungs if r not in rungs]
    if not rungs:
        raise InvalidJob(f"every rung is taller than the {video.height}p source")
    sizes = {r.height: (_width(r.height, video.width, video.height), r.height) for r in rungs}
    subs, sub_notes = rendition_tracks(op.subtitles if op.hls else "drop", info)
    starts, seconds = await _samples(ctx, op, src, duration)
    reel = ctx.scratch / "reel.mkv"
    await _ffmpeg(ctx, reel_args(src, starts, seconds, reel, ctx.media.guard(), ctx.threads),
                  duration=seconds * len(starts), span=(0.0, 10.0))  # fmt: skip
    title = _Title(ctx, op, src, reel, seconds * len(starts), duration, sizes[rungs[0].height],
                   subs)  # fmt: skip
    searched = []
    for rung in rungs:
        searched.append(await _search(title, rung, sizes[rung.height]))
    hull = convex_hull([HullPoint(s.rung.height, s.kbps, s.display_quality) for s in searched])
    kept = [s for s in searched if s.rung.height in hull]
    gop = max(1, round((video.fps or 25.0) * op.segment_seconds))
    finals, files = await _final_ladder(title, kept, dest, gop)
    report = _report(title, starts, seconds, searched, finals)
    wall = time.monotonic() - started
    renditions = [
        Rendition(height=s.rung.height, width=s.size[0], codec=op.codec,
                  bitrate_kbps=round(finals[s.rung.height][1] * 8 / duration / 1000))
        for s in kept
    ]  # fmt: skip
    dropped += [f"{s.rung.height}p (off the convex hull)" for s in searched if s not in kept]
    notes = [
        f"{s.rung.height}p: no CRF from {op.crf_min} reached {op.metric} {op.target:g}; "
        f"used {s.crf:g}"
        for s in searched
        if not s.reached
    ] + sub_notes
    return JobResult(
        wall_seconds=wall,
        media_seconds=duration,
        realtime_factor=round(duration / wall, 3) if wall > 0 else None,
        encoder=SOFTWARE[op.codec],
        input_size_bytes=info.size_bytes,
        outputs=files,
        renditions=renditions,
        dropped_rungs=dropped,
        notes=notes,
        pertitle=report,
    )


def _check_node(ctx: JobContext, op: PerTitle) -> None:
    usable = ctx.usable_encoders()
    for encoder in dict.fromkeys((SOFTWARE[op.codec], "libx264")):  # libx264: the lossless reel
        if encoder not in usable:
            raise InvalidJob(f"no verified {encoder} encoder on this node")
    if op.metric == "vmaf" and ctx.filters and "libvmaf" not in ctx.filters:
        raise InvalidJob("this node's ffmpeg has no libvmaf filter: use metric 'psnr' or 'ssim'")


def _width(height: int, src_w: int, src_h: int) -> int:
    return max(2, round(src_w * height / src_h / 2) * 2)


async def _samples(
    ctx: JobContext, op: PerTitle, src: Path, duration: float
) -> tuple[list[float], float]:
    """Sample starts and length; a title no longer than the samples is its own one sample."""
    if op.samples * op.sample_seconds >= duration:
        return [0.0], duration
    log = ctx.scratch / "scenes.txt"
    await _ffmpeg(ctx, scene_args(src, log, ctx.media.guard(), ctx.threads))
    text = await asyncio.to_thread(_read_text, log)
    return pick_samples(parse_scene_scores(text), duration, op.samples, op.sample_seconds), (
        op.sample_seconds
    )


async def _search(t: _Title, rung: PerTitleRung, size: tuple[int, int]) -> _Searched:
    ctx, op, h = t.ctx, t.op, rung.height
    probes: list[Probe] = []
    files: dict[float, Path] = {}
    bounds = (op.crf_min, op.crf_max, START_CRF[op.codec], op.max_probes)
    while (crf := next_crf(probes, op.target, *bounds)) is not None:
        out = ctx.scratch / f"r{h}_crf{crf:g}.mp4"
        await _ffmpeg(ctx, encode_args(t.reel, out, size, op.codec, op.preset, ctx.threads,
                                       crf=crf, maxrate_kbps=rung.max_bitrate_kbps),
                      encodes=True)  # fmt: skip
        files[crf] = out
        probes.append((crf, round(await _measure(ctx, out, t.reel, size, op.metric), 4)))
    crf, quality, reached = choose_crf(probes, op.target, op.crf_min)
    kbps = await _kbps(files[crf], t.reel_seconds)
    display_q = quality
    if size != t.display:
        display_q = await _measure(ctx, files[crf], t.reel, t.display, op.metric)
    fixed = rung.baseline_kbps or fixed_ladder_kbps(h)
    fixed_out = ctx.scratch / f"r{h}_fixed.mp4"
    await _ffmpeg(ctx, encode_args(t.reel, fixed_out, size, op.codec, op.preset, ctx.threads,
                                   fixed_kbps=fixed), encodes=True)  # fmt: skip
    fixed_q = await _measure(ctx, fixed_out, t.reel, size, op.metric)
    return _Searched(rung, size, probes, crf, reached, quality, kbps, display_q, fixed,
                     await _kbps(fixed_out, t.reel_seconds), fixed_q)  # fmt: skip


async def _final_ladder(
    t: _Title, kept: Sequence[_Searched], dest: Path, gop: int
) -> tuple[dict[int, tuple[float, int]], list[OutputFile]]:
    """Encode and measure the kept rungs into a temporary directory, then seal it into `dest`;
    per height (measured quality, size in bytes), and the reported files."""
    ctx, op = t.ctx, t.op
    tmp = partial_path(dest, ctx.job_key, ctx.attempt)
    finals: dict[int, tuple[float, int]] = {}
    share = 90.0 / len(kept)
    try:
        await asyncio.to_thread(_fresh_dir, tmp)
        paths = []
        for i, s in enumerate(kept):
            out = tmp / rung_name(s.rung.height)
            args = encode_args(t.src, out, s.size, op.codec, op.preset, ctx.threads, crf=s.crf,
                               maxrate_kbps=s.rung.max_bitrate_kbps, gop=gop,
                               guard=ctx.media.guard())  # fmt: skip
            span = (10 + i * share, 10 + (i + 0.5) * share)  # the other half: measuring it
            await _ffmpeg(ctx, args, duration=t.duration, span=span, encodes=True)
            quality = await _measure(ctx, out, t.src, s.size, op.metric, ctx.media.guard())
            finals[s.rung.height] = (quality, await asyncio.to_thread(os.path.getsize, out))
            paths.append(out)
        if op.hls:
            args = hls_args(paths, tmp, op.segment_seconds, src=t.src, subtitles=t.subtitles,
                            guard=ctx.media.guard())  # fmt: skip
            await _ffmpeg(ctx, args)
            if t.subtitles:
                await add_hls_subtitles(ctx, tmp, list(t.subtitles), t.duration)
        ctx.handle.check()
        await check_gate(ctx.may_commit)
        files = await asyncio.to_thread(seal_ladder, tmp, dest)
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
    return finals, files


def _report(
    t: _Title,
    starts: list[float],
    seconds: float,
    searched: Sequence[_Searched],
    finals: dict[int, tuple[float, int]],
) -> PerTitleReport:
    rungs = []
    for s in searched:
        fixed_bits = round(s.fixed_actual_kbps * 1000 * t.duration)
        final = finals.get(s.rung.height)
        size = final[1] if final else None
        rungs.append(PerTitleRungReport(
            height=s.rung.height, width=s.size[0], crf=s.crf, probes=s.probes,
            target_reached=s.reached, predicted_quality=round(s.quality, 4),
            predicted_kbps=round(s.kbps, 3), display_quality=round(s.display_quality, 4),
            dropped=final is None, measured_quality=round(final[0], 4) if final else None,
            size_bytes=size,
            measured_kbps=round(size * 8 / t.duration / 1000, 3) if size is not None else None,
            fixed_kbps=s.fixed_kbps, fixed_quality=round(s.fixed_quality, 4),
            fixed_bits_estimated=fixed_bits,
            bits_saved_estimated=fixed_bits - round(s.kbps * 1000 * t.duration),
            bits_saved_measured=fixed_bits - size * 8 if size is not None else None,
        ))  # fmt: skip
    saved = [r.bits_saved_measured for r in rungs if r.bits_saved_measured is not None]
    return PerTitleReport(
        metric=t.op.metric, target=t.op.target, codec=t.op.codec, sample_starts=starts,
        sample_seconds=round(seconds, 3), display_width=t.display[0],
        display_height=t.display[1], rungs=rungs, bits_saved_measured=sum(saved),
    )  # fmt: skip


async def _ffmpeg(
    ctx: JobContext,
    args: list[str],
    *,
    duration: float | None = None,
    span: tuple[float, float] | None = None,
    encodes: bool = False,
) -> RunResult:
    """One run; only those given a `span` (the reel, the full encodes) report progress, so the
    job's percentage never runs backwards across the many short sample runs. Every run is
    announced with the job's encoder (the `started` event names it); a failure of a run that
    `encodes` with it counts against the encoder's health."""
    codec = ctx.spec.operation.codec if isinstance(ctx.spec.operation, PerTitle) else "h264"
    encoder = SOFTWARE[codec]
    await ctx.announce(encoder, args)
    try:
        return await run_ffmpeg(
            ctx.tools.ffmpeg,
            args,
            control=ctx.handle,
            on_progress=ctx.progress if span is not None else None,
            duration_s=duration,
            span=span or (0.0, 100.0),
            progress_interval=ctx.progress_interval,
            encoder=encoder if encodes else None,
        )
    except EncoderError as exc:
        ctx.encoder_failures.append(exc)
        raise


async def _measure(
    ctx: JobContext, dist: Path, ref: Path, size: tuple[int, int], metric: str,
    ref_guard: Sequence[str] = (),
) -> float:  # fmt: skip
    """The pooled quality: VMAF's arithmetic mean over frames, PSNR's average (capped at
    100 dB), SSIM's All."""
    log = ctx.scratch / "vmaf.json"
    with contextlib.suppress(FileNotFoundError):
        await asyncio.to_thread(log.unlink)
    run = await _ffmpeg(ctx, metric_args(dist, ref, size, metric, log, ctx.threads, ref_guard))
    if metric == "vmaf":
        scores = await asyncio.to_thread(read_vmaf_log, log)
        return sum(scores) / len(scores)
    if metric == "psnr":
        return psnr_scores(run.stderr_tail, []).average
    return plane_summary(run.stderr_tail, "SSIM", ("Y", "U", "V", "All")).average


async def _kbps(path: Path, seconds: float) -> float:
    return await asyncio.to_thread(os.path.getsize, path) * 8 / seconds / 1000


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""  # no frame scored (a one-frame title): every spot is as busy


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # a crashed earlier run of this attempt
    path.mkdir(parents=True)
