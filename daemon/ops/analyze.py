"""The analyze operation: VMAF, PSNR and SSIM of the job's input (distorted) against `reference`.

One ffmpeg run computes every asked metric: the reference is split once per metric and the
metrics are chained (each passes the distorted frames through). Both inputs start at PTS 0 and are
converted to one pixel format (10-bit when the reference is deeper than 8 bits); the distorted
input is scaled (bicubic) to the reference's size when they differ, the way VMAF is meant to be
read (quality as seen at the reference's resolution).

Decision on mismatched inputs: frame-by-frame metrics pair frame N with frame N, so inputs whose
video durations differ by more than 0.5 s, or whose frame rates differ (more than 0.1 %), would
compare unrelated pictures and give a meaningless number. They are rejected with InvalidJob
(permanent) saying which measure differs; a transcode job can trim (`start_seconds`,
`duration_seconds`) or resample (`fps`) one of them first. Within
0.5 s the shorter input decides the frame count (ffmpeg's framesync ends at the first EOF).

VMAF's model is `vmaf_4k_v0.6.1` for references above 2560x1440 when `vmaf_model` is `auto`,
else `vmaf_v0.6.1`. Per-frame scores come from libvmaf's JSON log (in scratch); the harmonic mean
is libvmaf's (n / sum(1 / (1 + x)) - 1), percentiles interpolate linearly. With `frame_log` the
JSON log becomes the job's output file. PSNR of identical pictures is infinite: it is reported as
100 dB, with a note.
"""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import time
from collections.abc import Set as AbstractSet
from pathlib import Path

from daemon.errors import InputError, InvalidJob, JobError, JobTimeout, ResourceExhausted
from daemon.ffmpeg.run import RunResult, run_ffmpeg
from daemon.media.access import open_input, output_path
from daemon.media.limits import guard_args
from daemon.media.paths import ffmpeg_arg
from daemon.ops.beside import stop
from daemon.ops.context import JobContext
from daemon.ops.outputs import OutputSet
from daemon.ops.vmafpool import read_vmaf_log, vmaf_scores
from daemon.probe.gpu import CUDA_ENV
from schemas.operations import Analyze
from schemas.results import JobResult, PlaneScores, ProbeInfo, StreamInfo

MAX_DURATION_GAP_S = 0.5
MAX_FPS_RATIO_GAP = 0.001
PSNR_CAP_DB = 100.0
_4K_PIXELS = 2560 * 1440
_FIELD = re.compile(r"([A-Za-z]+):(inf|-?[0-9.]+)")


async def run_analyze(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    spec, op = ctx.spec, ctx.spec.operation
    assert isinstance(op, Analyze) and spec.output is not None  # JobSpec requires an output
    if op.frame_log and not op.vmaf:
        raise InvalidJob("frame_log is libvmaf's per-frame log: it needs vmaf: true")
    dest = await output_path(ctx, spec.output)
    # Both fetched and probed at once; the input's refusal still comes first.
    opening = (asyncio.create_task(open_input(ctx, spec.input)),
               asyncio.create_task(open_input(ctx, op.reference, "reference")))  # fmt: skip
    try:
        dist, dist_info = await opening[0]
        ref, ref_info = await opening[1]
    finally:
        for task in opening:
            await stop(task)
    d, r = _video(dist_info, "input"), _video(ref_info, "reference")
    check_comparable(d, r, dist_info.duration_s, ref_info.duration_s)
    model = op.vmaf_model
    if model == "auto":
        big = (r.width or 0) * (r.height or 0) > _4K_PIXELS
        model = "vmaf_4k_v0.6.1" if big else "vmaf_v0.6.1"
    log_path = ctx.scratch / "vmaf.json"
    notes: list[str] = []
    inputs = (ffmpeg_arg(dist), ffmpeg_arg(ref), guard_args(ctx.media.limits))
    run = None
    if ctx.cuda_gpus and cuda_vmaf_possible(op, r, ctx.hwaccels, ctx.filters):
        args = cuda_vmaf_args(op, d, r, model, log_path, ctx.media.guard(), inputs)
        try:
            run = await _run(ctx, args, ref_info.duration_s)
            notes.append("VMAF computed on the GPU (libvmaf_cuda)")
        except (JobTimeout, ResourceExhausted):
            raise
        except JobError as exc:  # a CUDA decode or filter failure: the CPU graph still works
            notes.append(f"libvmaf_cuda failed ({exc.reason[:200]}); computed on the CPU")
    if run is None:
        graph = filter_graph(op, d, r, model, log_path, ctx.threads)
        args = ["-filter_threads", str(ctx.threads), *ctx.media.guard(), "-i", inputs[0]]
        args += [*inputs[2], "-i", inputs[1], "-filter_complex", graph]
        args += ["-map", "[out]", "-an", "-f", "null", "-"]
        run = await _run(ctx, args, ref_info.duration_s)
    result = JobResult(media_seconds=ref_info.duration_s, input_size_bytes=dist_info.size_bytes)
    if op.psnr:
        result.psnr = psnr_scores(run.stderr_tail, notes)
    if op.ssim:
        result.ssim = plane_summary(run.stderr_tail, "SSIM", ("Y", "U", "V", "All"))
    if op.vmaf:
        scores = await asyncio.to_thread(read_vmaf_log, log_path)
        result.vmaf = vmaf_scores(scores, model)
    if op.frame_log:
        async with OutputSet(ctx.job_key, ctx.attempt, ctx.may_commit) as outputs:
            partial = await outputs.stage(dest, uri=spec.output, role="frame_log")
            await asyncio.to_thread(shutil.copyfile, log_path, partial)
            result.outputs = await outputs.commit()
    result.notes = notes
    result.wall_seconds = time.monotonic() - started
    media = ref_info.duration_s
    result.realtime_factor = round(media / result.wall_seconds, 3) if media else None
    return result


async def _run(ctx: JobContext, args: list[str], duration_s: float | None) -> RunResult:
    await ctx.announce(None, args)
    return await run_ffmpeg(
        ctx.tools.ffmpeg,
        args,
        control=ctx.handle,
        on_progress=ctx.progress,
        duration_s=duration_s,
        progress_interval=ctx.progress_interval,
        env=CUDA_ENV,
    )


def cuda_vmaf_possible(
    op: Analyze, r: StreamInfo, hwaccels: AbstractSet[str], filters: AbstractSet[str]
) -> bool:
    """VMAF, 8-bit, on a build with libvmaf_cuda, scale_cuda and the cuda hwaccel."""
    gpu = {"libvmaf_cuda", "scale_cuda", "hwdownload"} <= filters and "cuda" in hwaccels
    return gpu and op.vmaf and (r.bit_depth or 8) <= 8


def cuda_vmaf_args(
    op: Analyze,
    d: StreamInfo,
    r: StreamInfo,
    model: str,
    log_path: Path,
    guard: tuple[str, ...],
    inputs: tuple[str, str, list[str]],
) -> list[str]:
    """Both inputs decoded on the GPU (NVDEC) and scaled there (scale_cuda) to the reference's
    size; libvmaf_cuda scores them there. PSNR and SSIM, CPU filters, get copies downloaded."""
    hw = ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"]
    dist, ref, ref_guard = inputs
    log = filter_value(str(log_path))
    cpu = [m for m, asked in (("psnr", op.psnr), ("ssim", op.ssim)) if asked]
    fan = ",split=2[dv][dc]" if cpu else "[dv]"
    rfan = ",split=2[rv][rc]" if cpu else "[rv]"
    parts = [
        f"[0:v:0]setpts=PTS-STARTPTS,scale_cuda={r.width}:{r.height}:format=yuv420p{fan}",
        f"[1:v:0]setpts=PTS-STARTPTS,scale_cuda=format=yuv420p{rfan}",
        f"[dv][rv]libvmaf_cuda=model=version={model}:log_fmt=json:log_path={log}"
        f":n_subsample={op.subsample}" + ("[vm];[vm]nullsink" if cpu else "[out]"),
    ]
    if cpu:
        refs = "".join(f"[r{i}]" for i in range(len(cpu)))
        parts.append("[dc]hwdownload,format=yuv420p[d0]")
        parts.append(f"[rc]hwdownload,format=yuv420p,split={len(cpu)}{refs}")
        for i, metric in enumerate(cpu):
            out = "[out]" if i + 1 == len(cpu) else f"[d{i + 1}]"
            parts.append(f"[d{i}][r{i}]{metric}{out}")
    args = [*hw, *guard, "-i", dist, *hw, *ref_guard, "-i", ref]
    return [*args, "-filter_complex", ";".join(parts), "-map", "[out]", "-an", "-f", "null", "-"]


def _video(info: ProbeInfo, what: str) -> StreamInfo:
    for stream in info.streams:
        if stream.type == "video" and stream.width and stream.height:
            return stream
    raise InputError(f"the {what} has no video stream with a known size")


def check_comparable(
    d: StreamInfo, r: StreamInfo, d_dur: float | None, r_dur: float | None
) -> None:
    """Raise InvalidJob when frame N of one input is not frame N of the other (see docstring)."""
    d_s, r_s = d.duration_s or d_dur, r.duration_s or r_dur
    if d_s is not None and r_s is not None and abs(d_s - r_s) > MAX_DURATION_GAP_S:
        raise InvalidJob(
            f"input lasts {d_s:.3f} s and reference {r_s:.3f} s (more than "
            f"{MAX_DURATION_GAP_S} s apart): trim them to the same span first (a transcode "
            "job's `start_seconds` and `duration_seconds`)"
        )
    if d.fps and r.fps and abs(d.fps - r.fps) > MAX_FPS_RATIO_GAP * max(d.fps, r.fps):
        raise InvalidJob(
            f"input runs at {d.fps:g} fps and reference at {r.fps:g} fps: frames would not "
            "pair up; convert the input to the reference's frame rate first (a transcode job's "
            "`fps`)"
        )


def filter_graph(
    op: Analyze, d: StreamInfo, r: StreamInfo, model: str, log_path: Path, threads: int
) -> str:
    pix = "yuv420p10le" if (r.bit_depth or 8) > 8 else "yuv420p"
    scale = (
        ""
        if (d.width, d.height) == (r.width, r.height)
        else (f"scale={r.width}:{r.height}:flags=bicubic,")
    )
    metrics = []
    if op.psnr:
        metrics.append("psnr")
    if op.ssim:
        metrics.append("ssim")
    if op.vmaf:
        log = filter_value(str(log_path))
        metrics.append(
            f"libvmaf=model=version={model}:log_fmt=json:log_path={log}"
            f":n_threads={threads}:n_subsample={op.subsample}"
        )
    refs = "".join(f"[r{i}]" for i in range(len(metrics)))
    parts = [
        f"[0:v:0]setpts=PTS-STARTPTS,{scale}format={pix}[d0]",
        f"[1:v:0]setpts=PTS-STARTPTS,format={pix},split={len(metrics)}{refs}",
    ]
    for i, metric in enumerate(metrics):
        out = "[out]" if i + 1 == len(metrics) else f"[d{i + 1}]"
        parts.append(f"[d{i}][r{i}]{metric}{out}")
    return ";".join(parts)


def filter_value(text: str) -> str:
    """Escape a filter option value for both levels: the option parser, then the graph parser."""
    for ch in "\\':":
        text = text.replace(ch, "\\" + ch)
    for ch in "\\'[],;":
        text = text.replace(ch, "\\" + ch)
    return text


def plane_summary(tail: str, name: str, keys: tuple[str, str, str, str]) -> PlaneScores:
    """Per-plane averages from the filter's closing line, e.g. `SSIM Y:0.87 (8.8) U:... All:...`."""
    for line in reversed(tail.splitlines()):
        marker = f"] {name} {keys[0]}:"
        if marker not in line:
            continue
        body = line.split(f"] {name} ", 1)[1]
        fields = dict(_FIELD.findall(body))
        try:
            y, u, v, avg = (float(fields[k]) for k in keys)
        except (KeyError, ValueError) as exc:
            raise JobError(f"unreadable {name} summary: {line[:300]!r}") from exc
        return PlaneScores(y=y, u=u, v=v, average=avg)
    raise JobError(f"ffmpeg printed no {name} summary", stderr_tail=tail)


def psnr_scores(tail: str, notes: list[str]) -> PlaneScores:
    scores = plane_summary(tail, "PSNR", ("y", "u", "v", "average"))
    values = [scores.y, scores.u, scores.v, scores.average]
    if any(math.isinf(x) for x in values):
        notes.append(f"PSNR is infinite (identical planes): reported as {PSNR_CAP_DB:g} dB")
        values = [min(x, PSNR_CAP_DB) for x in values]
    return PlaneScores(y=values[0], u=values[1], v=values[2], average=values[3])
