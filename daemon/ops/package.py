"""The package operation: an ABR ladder as HLS (fMP4 or TS) and/or DASH, encoded in one ffmpeg run.

The source video is split once per rung and scaled (never up: rungs taller than the source are
dropped and listed in JobResult.dropped_rungs). Every rung gets the same closed GOP of exactly
one segment (`-g`/`-keyint_min` = fps x segment_seconds, no scene-cut keyframes, keyframes forced
on segment boundaries), so renditions switch cleanly. HLS alone uses the hls muxer with a
`var_stream_map` (audio per rung); DASH uses the dash muxer, which with `hls` also writes HLS
playlists over the same fMP4 segments (one audio rendition, the highest asked bitrate). HLS with
TS segments plus DASH would need a second encode, so it is refused.

`output` names a directory that must not exist yet. ffmpeg writes into a sibling temporary
directory that is renamed into place only when the run succeeded, so readers never see half a
package; the playlists and manifest (not every segment) are reported with their SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import time
from pathlib import Path

from daemon.errors import InputError, InvalidJob, JobError
from daemon.ffmpeg.run import run_ffmpeg
from daemon.media.access import open_input, output_path
from daemon.media.paths import ffmpeg_arg, uri_of
from daemon.ops.context import JobContext
from daemon.ops.outputs import check_gate, partial_path
from schemas.operations import Package, Rung
from schemas.results import JobResult, OutputFile, Rendition

ENCODERS = {"h264": "libx264", "hevc": "libx265"}
_REPORTED = (".m3u8", ".mpd")


async def run_package(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    spec, op = ctx.spec, ctx.spec.operation
    assert isinstance(op, Package) and spec.output is not None  # JobSpec requires an output
    if op.dash and op.hls and op.hls_segment_type == "mpegts":
        raise InvalidJob("HLS with TS segments plus DASH needs two encodes: use fmp4 segments")
    dest = await output_path(ctx, spec.output)
    if "%" in str(dest):
        raise InvalidJob("the output directory name must not contain '%' (a muxer pattern)")
    if await asyncio.to_thread(dest.exists):
        raise InvalidJob(f"output {spec.output!r} already exists")
    for rung in op.ladder:
        if ENCODERS[rung.codec] not in ctx.usable_encoders():
            raise InvalidJob(f"no verified {rung.codec} encoder on this node")
        if rung.height % 2 or (rung.width or 0) % 2:
            raise InvalidJob(f"rung {rung.height}p: 4:2:0 video needs an even width and height")
    src, info = await open_input(ctx, spec.input)
    video = next((s for s in info.streams if s.type == "video" and s.height), None)
    if video is None or not video.height or not video.width:
        raise InputError("input has no video stream with a known size")
    has_audio = any(s.type == "audio" for s in info.streams)
    if has_audio and "aac" not in ctx.usable_encoders():
        raise InvalidJob("no verified aac audio encoder on this node")
    kept = [r for r in op.ladder if r.height <= video.height]
    dropped = [f"{r.height}p (source is {video.height}p)" for r in op.ladder if r not in kept]
    if not kept:
        raise InvalidJob(f"every rung is taller than the {video.height}p source")
    kept.sort(key=lambda r: -r.height)
    gop = max(1, round((video.fps or 25.0) * op.segment_seconds))
    tmp = partial_path(dest, ctx.job_key, ctx.attempt)
    await asyncio.to_thread(_fresh_dir, tmp)
    try:
        args = package_args(op, kept, src, tmp, gop, has_audio, ctx.threads, ctx.media.guard())
        await ctx.announce(ENCODERS[kept[0].codec], args)
        await run_ffmpeg(
            ctx.tools.ffmpeg,
            args,
            control=ctx.handle,
            on_progress=ctx.progress,
            duration_s=info.duration_s,
            progress_interval=ctx.progress_interval,
            encoder=ENCODERS[kept[0].codec],
        )
        ctx.handle.check()
        await check_gate(ctx.may_commit)
        files = await asyncio.to_thread(_seal_dir, tmp, dest)
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
    renditions = [
        Rendition(height=r.height, width=_width(r, video.width, video.height),
                  bitrate_kbps=r.bitrate_kbps, codec=r.codec)
        for r in kept
    ]  # fmt: skip
    wall = time.monotonic() - started
    media = info.duration_s
    return JobResult(
        wall_seconds=wall,
        media_seconds=media,
        realtime_factor=round(media / wall, 3) if media and wall > 0 else None,
        encoder=ENCODERS[kept[0].codec],
        input_size_bytes=info.size_bytes,
        outputs=files,
        renditions=renditions,
        dropped_rungs=dropped,
    )


def _width(rung: Rung, src_w: int, src_h: int) -> int:
    return rung.width or max(2, round(src_w * rung.height / src_h / 2) * 2)


def package_args(
    op: Package,
    rungs: list[Rung],
    src: Path,
    out: Path,
    gop: int,
    audio: bool,
    threads: int,
    guard: tuple[str, ...] = ("-protocol_whitelist", "file"),
) -> list[str]:
    n = len(rungs)
    labels = "".join(f"[s{i}]" for i in range(n))
    graph = [f"[0:v:0]split={n}{labels}"]
    graph += [
        f"[s{i}]scale={r.width or -2}:{r.height},format=yuv420p[v{i}]" for i, r in enumerate(rungs)
    ]
    args = ["-filter_threads", str(threads), "-threads", str(threads)]
    args += [*guard, "-i", ffmpeg_arg(src)]
    args += ["-filter_complex", ";".join(graph)]
    args += [a for i in range(n) for a in ("-map", f"[v{i}]")]
    for i, r in enumerate(rungs):
        kbps = r.bitrate_kbps
        args += [f"-c:v:{i}", ENCODERS[r.codec], f"-b:v:{i}", f"{kbps}k"]
        if r.codec == "hevc":  # Apple players want the hvc1 sample entry
            args += [f"-tag:v:{i}", "hvc1"]
        args += [f"-maxrate:v:{i}", f"{kbps * 107 // 100}k", f"-bufsize:v:{i}", f"{kbps * 2}k"]
    args += ["-preset", op.preset, "-g", str(gop), "-keyint_min", str(gop), "-sc_threshold", "0"]
    args += ["-force_key_frames", f"expr:gte(t,n_forced*{op.segment_seconds!r})"]
    if any(r.codec == "hevc" for r in rungs):  # x265 takes its GOP from its own parameters
        args += ["-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=warning"]
    with_audio = [r for r in rungs if audio and r.audio_bitrate_kbps is not None]
    if op.dash:
        return args + _dash_args(op, out, max((r.audio_bitrate_kbps or 0) for r in with_audio)
                                 if with_audio else None)  # fmt: skip
    stream_map = []
    for i, r in enumerate(rungs):
        if r in with_audio:
            a = with_audio.index(r)
            args += ["-map", "0:a:0", f"-c:a:{a}", "aac", f"-b:a:{a}", f"{r.audio_bitrate_kbps}k"]
            stream_map.append(f"v:{i},a:{a}")
        else:
            stream_map.append(f"v:{i}")
    args += ["-f", "hls", "-hls_time", f"{op.segment_seconds!r}", "-hls_playlist_type", "vod"]
    args += ["-hls_segment_type", op.hls_segment_type, "-hls_flags", "independent_segments"]
    args += ["-master_pl_name", "master.m3u8", "-var_stream_map", " ".join(stream_map)]
    ext = "m4s" if op.hls_segment_type == "fmp4" else "ts"
    # Plain absolute paths: the hls muxer derives init/segment names from them (no `file:`).
    args += ["-hls_segment_filename", f"{out}/stream_%v/seg_%05d.{ext}"]
    return [*args, f"{out}/stream_%v/index.m3u8"]


def _dash_args(op: Package, out: Path, audio_kbps: int | None) -> list[str]:
    args = []
    sets = "id=0,streams=v"
    if audio_kbps is not None:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", f"{audio_kbps}k"]
        sets += " id=1,streams=a"
    args += ["-f", "dash", "-seg_duration", f"{op.segment_seconds!r}", "-use_template", "1"]
    args += ["-use_timeline", "1", "-adaptation_sets", sets]
    if op.hls:
        args += ["-hls_playlist", "1"]
    return [*args, f"{out}/manifest.mpd"]


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # a crashed earlier run of this attempt
    path.mkdir(parents=True)


def _seal_dir(tmp: Path, dest: Path) -> list[OutputFile]:
    """Hash the playlists/manifest, fsync, and rename the directory into place (no overwrite)."""
    files = []
    for path in sorted(tmp.rglob("*")):
        if not path.is_file():
            continue
        with open(path, "rb") as f:
            os.fsync(f.fileno())
            data = f.read() if path.suffix in _REPORTED else None
        if data is not None:
            rel = path.relative_to(tmp)
            role = "master" if rel.name in ("master.m3u8", "manifest.mpd") else "playlist"
            digest = hashlib.sha256(data).hexdigest()
            files.append(
                OutputFile(uri=uri_of(dest / rel), size_bytes=len(data), sha256=digest, role=role)
            )
    if not files:
        raise JobError("ffmpeg wrote no playlist or manifest")
    try:
        os.rename(tmp, dest)  # fails if dest appeared meanwhile and is not empty
    except OSError as exc:
        raise JobError(f"cannot move the package into place: {exc.strerror}") from exc
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return files
