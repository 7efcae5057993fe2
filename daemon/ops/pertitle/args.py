"""The per-title ladder's ffmpeg argument vectors, pure.

Samples are cut once into a lossless "reel" (trim + concat, libx264 at QP 0): every probe
encodes the reel, and every measurement uses it as the reference, so the source is decoded and
seeked only once. Scaling is bicubic everywhere, as in the analyze operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from daemon.media.paths import ffmpeg_arg
from daemon.ops.analyze import filter_value
from daemon.ops.ladder_args import SOFTWARE
from daemon.ops.subtitles import webvtt_outputs
from schemas.results import StreamInfo

#: Width the scene-change pass scales to: scene scores need no detail, only change.
SCENE_WIDTH = 160
#: A fixed-ladder rung's VBV, as the package operation sets it: maxrate +7 %, buffer 2 s.
FIXED_MAXRATE = 1.07


def scene_args(src: Path, log: Path, guard: Sequence[str], threads: int) -> list[str]:
    """Every frame's scene-change score (0..1, from `select`) into `log`."""
    graph = (f"scale={SCENE_WIDTH}:-2,select='gte(scene,0)',"
             f"metadata=print:key=lavfi.scene_score:file={filter_value(str(log))}")  # fmt: skip
    return ["-threads", str(threads), *guard, "-i", ffmpeg_arg(src), "-map", "0:v:0",
            "-vf", graph, "-an", "-f", "null", "-"]  # fmt: skip


def reel_args(
    src: Path, starts: Sequence[float], seconds: float, out: Path, guard: Sequence[str],
    threads: int,
) -> list[str]:  # fmt: skip
    """The samples back to back, losslessly, at the source's size (8-bit 4:2:0)."""
    n = len(starts)
    parts = [f"[0:v:0]split={n}" + "".join(f"[in{i}]" for i in range(n))] if n > 1 else []
    for i, start in enumerate(starts):
        label = f"[in{i}]" if n > 1 else "[0:v:0]"
        parts.append(f"{label}trim=start={start!r}:duration={seconds!r},setpts=PTS-STARTPTS[s{i}]")
    joined = "".join(f"[s{i}]" for i in range(n))
    parts.append(f"{joined}concat=n={n}:v=1:a=0,format=yuv420p[reel]")
    return ["-threads", str(threads), *guard, "-i", ffmpeg_arg(src),
            "-filter_complex", ";".join(parts), "-map", "[reel]", "-an",
            "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", ffmpeg_arg(out)]  # fmt: skip


def encode_args(
    src: Path,
    out: Path,
    size: tuple[int, int],
    codec: str,
    preset: str,
    threads: int,
    *,
    crf: float | None = None,
    maxrate_kbps: int | None = None,
    fixed_kbps: int | None = None,
    gop: int | None = None,
    guard: Sequence[str] = ("-protocol_whitelist", "file"),
) -> list[str]:
    """One rung: `crf` (VBV-capped by `maxrate_kbps` when given), or the fixed ladder's
    `fixed_kbps` with the package operation's VBV. `gop`: a keyframe exactly every `gop`
    frames, none at scene cuts, so the rungs' segments line up in an HLS package."""
    w, h = size
    args = ["-threads", str(threads), *guard, "-i", ffmpeg_arg(src), "-map", "0:v:0", "-an"]
    args += ["-vf", f"scale={w}:{h}:flags=bicubic,format=yuv420p"]
    args += ["-c:v", SOFTWARE[codec], "-preset", preset]
    if fixed_kbps is not None:
        maxrate = round(fixed_kbps * FIXED_MAXRATE)
        args += ["-b:v", f"{fixed_kbps}k", "-maxrate", f"{maxrate}k"]
        args += ["-bufsize", f"{fixed_kbps * 2}k"]
    else:
        assert crf is not None
        args += ["-crf", f"{crf:g}"]
        if maxrate_kbps is not None:
            args += ["-maxrate", f"{maxrate_kbps}k", "-bufsize", f"{maxrate_kbps * 2}k"]
    x265 = ["log-level=error"]
    if gop is not None:
        args += ["-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
        x265 += [f"keyint={gop}", f"min-keyint={gop}", "scenecut=0"]
    if codec == "hevc":  # Apple players want the hvc1 sample entry
        args += ["-tag:v", "hvc1", "-x265-params", ":".join(x265)]
    return [*args, "-movflags", "+faststart", ffmpeg_arg(out)]


def metric_args(
    dist: Path, ref: Path, size: tuple[int, int], metric: str, log: Path, threads: int,
    ref_guard: Sequence[str] = (),
) -> list[str]:  # fmt: skip
    """`metric` of `dist` against `ref`, both scaled to `size` (the distorted one from its
    rung's size, the reference from the source's); VMAF per frame into the JSON `log`."""
    w, h = size
    fit = f"setpts=PTS-STARTPTS,scale={w}:{h}:flags=bicubic,format=yuv420p"
    if metric == "vmaf":
        model = "vmaf_4k_v0.6.1" if w * h > 2560 * 1440 else "vmaf_v0.6.1"
        measure = (f"libvmaf=model=version={model}:log_fmt=json:log_path={filter_value(str(log))}"
                   f":n_threads={threads}")  # fmt: skip
    else:
        measure = metric
    graph = f"[0:v:0]{fit}[d];[1:v:0]{fit}[r];[d][r]{measure}[out]"
    return ["-filter_threads", str(threads), "-i", ffmpeg_arg(dist), *ref_guard,
            "-i", ffmpeg_arg(ref), "-filter_complex", graph, "-map", "[out]", "-an",
            "-f", "null", "-"]  # fmt: skip


def hls_args(
    rungs: Sequence[Path],
    out: Path,
    segment_seconds: float,
    *,
    src: Path | None = None,
    subtitles: Sequence[StreamInfo] = (),
    guard: Sequence[str] = ("-protocol_whitelist", "file"),
) -> list[str]:
    """The finished rung files (tallest first) copied, not re-encoded, into one HLS package
    (fMP4 segments, a master playlist naming every rung); their keyframes already fall on
    segment boundaries (`encode_args`' `gop`). `subtitles`: text tracks of the source `src`
    (read as the last input) written as WebVTT files beside it, as the package operation does
    (daemon.ops.subtitles.webvtt_outputs)."""
    args: list[str] = []
    for path in rungs:
        args += ["-i", ffmpeg_arg(path)]
    if subtitles:
        assert src is not None
        args += [*guard, "-i", ffmpeg_arg(src)]
    for i in range(len(rungs)):
        args += ["-map", f"{i}:v:0"]
    args += ["-c", "copy", "-f", "hls", "-hls_time", f"{segment_seconds!r}"]
    args += ["-hls_playlist_type", "vod", "-hls_segment_type", "fmp4"]
    args += ["-hls_flags", "independent_segments", "-master_pl_name", "master.m3u8"]
    args += ["-var_stream_map", " ".join(f"v:{i}" for i in range(len(rungs)))]
    # Plain absolute paths: the hls muxer derives init/segment names from them (no `file:`).
    args += ["-hls_segment_filename", f"{out}/stream_%v/seg_%05d.m4s"]
    args.append(f"{out}/stream_%v/index.m3u8")
    return [*args, *webvtt_outputs(list(subtitles), out, source=len(rungs))]
