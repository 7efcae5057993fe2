"""The package operation: an ABR ladder as HLS (fMP4 or TS) and/or DASH, encoded in one ffmpeg run.

The source video is split once per rung and scaled (never up: rungs taller than the source are
dropped and listed in JobResult.dropped_rungs). Every rung gets the same closed GOP of exactly
one segment (`-g`/`-keyint_min` = fps x segment_seconds, no scene-cut keyframes, keyframes forced
on segment boundaries), so renditions switch cleanly. HLS alone uses the hls muxer with a
`var_stream_map` (audio per rung, or one AUDIO group of alternate tracks); DASH uses the dash
muxer, which with `hls` also writes HLS playlists over the same fMP4 segments (one audio
rendition, the highest asked bitrate, or the alternate tracks). HLS with TS segments plus DASH
would need a second encode, so it is refused. Text subtitles become WebVTT files added to the
master playlist or the manifest afterwards (the muxers write neither well).

`output` names a directory that must not exist yet. ffmpeg writes into a sibling temporary
directory that is renamed into place only when the run succeeded, so readers never see half a
package; the playlists and manifest (not every segment) are reported with their SHA-256.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

from daemon.errors import (
    EncoderError,
    InputError,
    InvalidJob,
    JobError,
    JobTimeout,
    ResourceExhausted,
)
from daemon.ffmpeg.proc import capture
from daemon.ffmpeg.run import run_ffmpeg
from daemon.media.access import open_input, output_path
from daemon.media.paths import ffmpeg_arg, uri_of
from daemon.ops.context import JobContext
from daemon.ops.devices import NoDevice, placed
from daemon.ops.ladder_args import (
    SOFTWARE,
    AltAudio,
    LadderHw,
    cuda_frames_possible,
    package_args,
    rung_encoder,
    rung_width,
    with_audio_names,
)
from daemon.ops.outputs import check_gate, partial_path, rename_dir_into_place
from daemon.ops.subtitles import (
    first_segment,
    hls_language,
    rendition_tracks,
    video_start,
    vtt_playlist,
    webvtt_outputs,
    with_dash_subtitles,
    with_subtitles,
    with_timestamp_map,
)
from daemon.ops.transcode_plan import HDR_NAMES, HDR_TRANSFER
from daemon.probe.gpu import CUDA_ENV
from schemas.audioopts import CHANNELS, rendition_names
from schemas.encoderneeds import package_family
from schemas.operations import Package, Rung
from schemas.results import (
    AudioRenditionReport,
    JobResult,
    OutputFile,
    ProbeInfo,
    Rendition,
    StreamInfo,
)

_REPORTED = (".m3u8", ".mpd")


def _families(ctx: JobContext, op: Package) -> list[str]:
    """`nvenc` first where the job asks for it (accel, or the nvenc pool under auto) and the node
    verified NVENC for every rung's codec; then software unless accel forbids it."""
    usable = ctx.usable_encoders()
    codecs = {r.codec for r in op.ladder}
    hw = package_family(ctx.spec)
    families = []
    if hw is not None and all(f"{c}_{hw}" in usable for c in codecs):
        families.append(hw)
    software_allowed = hw is None or ctx.spec.requirements.accel != hw
    if software_allowed and all(SOFTWARE[c] in usable for c in codecs):
        families.append("software")
    if not families:
        which = ", ".join(sorted(codecs))
        raise InvalidJob(f"no verified {hw or 'software'} encoder for {which} on this node")
    return families


@dataclass(frozen=True, slots=True)
class _Run:
    ctx: JobContext
    op: Package
    rungs: list[Rung]
    src: Path
    gop: int
    audio: bool
    size: tuple[int, int]
    duration_s: float | None
    #: Text subtitle streams that become WebVTT renditions.
    subtitles: tuple[StreamInfo, ...] = ()
    #: Alternate audio tracks shared by every rung (empty: audio muxed per rung).
    alt_audio: tuple[AltAudio, ...] = ()
    #: An HDR source made SDR (zscale + tonemap, on the CPU).
    tonemap: bool = False


async def _with_fallback(run: _Run, tmp: Path, families: list[str], notes: list[str]) -> str:
    """The ladder on NVENC (placed on one GPU with a session per rung), falling back to software
    where allowed; returns the first rung's encoder."""
    ctx = run.ctx
    for i, family in enumerate(families):
        encoders = {f"{r.codec}_{family}" for r in run.rungs} if family != "software" else set()
        try:
            with placed(ctx.devices, family, encoders, len(run.rungs)) as placement:
                hw = None
                if family == "nvenc":
                    gpu = placement.gpu if placement else None
                    hw = await _nvenc(run, tmp, gpu, notes)
                else:
                    await _encode(run, tmp, None)
                return rung_encoder(run.rungs[0], hw)
        except NoDevice as exc:
            if i + 1 == len(families):
                raise
            notes.append(f"{family} skipped ({exc.reason}); used {families[i + 1]}")
        except EncoderError as exc:
            ctx.encoder_failures.append(exc)
            if i + 1 == len(families):
                raise
            notes.append(f"{exc.encoder} failed ({exc.reason[:200]}); fell back to software")
    raise AssertionError("unreachable: families is never empty")


async def _nvenc(run: _Run, tmp: Path, gpu: int | None, notes: list[str]) -> LadderHw:
    """The NVENC ladder with frames kept on the GPU where the build can; if that run fails for
    a reason of its own (an input codec NVDEC cannot decode leaves frames in system memory,
    which scale_cuda refuses), the same ladder once more, decoded and scaled on the CPU. Only
    the second run's encoder failure counts against the encoder."""
    ctx = run.ctx
    gpu_frames = cuda_frames_possible(ctx.hwaccels, ctx.filters) and ctx.cuda_gpus > 0
    if gpu_frames and not run.tonemap:  # zscale and tonemap take frames in system memory
        on_gpu = LadderHw(gpu, cuda_frames=True)
        try:
            await _encode(run, tmp, on_gpu)
            return on_gpu
        except (JobTimeout, ResourceExhausted):
            raise
        except JobError as exc:
            notes.append(f"decode and scaling on the GPU failed ({exc.reason[:200]}); "
                         "scaled on the CPU")  # fmt: skip
    hw = LadderHw(gpu, cuda_frames=False)
    await _encode(run, tmp, hw)
    return hw


async def _encode(run: _Run, tmp: Path, hw: LadderHw | None) -> None:
    ctx = run.ctx
    await asyncio.to_thread(_fresh_dir, tmp)
    subs = tuple(webvtt_outputs(list(run.subtitles), tmp))
    args = package_args(run.op, run.rungs, run.src, tmp, run.gop, run.audio, ctx.threads,
                        ctx.media.guard(), size=run.size, hw=hw, subtitles=subs,
                        alt_audio=run.alt_audio, tonemap=run.tonemap)  # fmt: skip
    encoder = rung_encoder(run.rungs[0], hw)
    await ctx.announce(encoder, args)
    await run_ffmpeg(
        ctx.tools.ffmpeg,
        args,
        control=ctx.handle,
        on_progress=ctx.progress,
        duration_s=run.duration_s,
        progress_interval=ctx.progress_interval,
        encoder=encoder,
        env=CUDA_ENV if hw is not None else None,
    )


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
        if rung.height % 2 or (rung.width or 0) % 2:
            raise InvalidJob(f"rung {rung.height}p: 4:2:0 video needs an even width and height")
    families = _families(ctx, op)
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
    size = (video.width, video.height)
    subs, notes = _subtitle_tracks(op, info)
    alt_audio = alternate_audio(op, info)
    tonemap = hdr_tonemap(op, video, notes)
    run = _Run(ctx, op, kept, src, gop, has_audio, size, info.duration_s, subs, alt_audio, tonemap)
    tmp = partial_path(dest, ctx.job_key, ctx.attempt)
    try:
        encoder = await _with_fallback(run, tmp, families, notes)
        if alt_audio and op.hls and not op.dash:
            await asyncio.to_thread(_name_audio, tmp, len(kept), alt_audio)
        if subs and op.dash:
            await asyncio.to_thread(_add_dash_subtitles, tmp, list(subs))
        elif subs:
            await add_hls_subtitles(ctx, tmp, list(subs), info.duration_s or 0.0)
        ctx.handle.check()
        await check_gate(ctx.may_commit)
        files = await asyncio.to_thread(_seal_dir, tmp, dest)
    finally:
        await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
    renditions = [
        Rendition(height=r.height, width=rung_width(r, video.width, video.height),
                  bitrate_kbps=r.bitrate_kbps, codec=r.codec)
        for r in kept
    ]  # fmt: skip
    wall = time.monotonic() - started
    media = info.duration_s
    return JobResult(
        wall_seconds=wall,
        media_seconds=media,
        realtime_factor=round(media / wall, 3) if media and wall > 0 else None,
        encoder=encoder,
        notes=notes,
        input_size_bytes=info.size_bytes,
        outputs=files,
        renditions=renditions,
        audio_renditions=[
            AudioRenditionReport(
                name=a.name,
                track=a.track,
                language=a.language,
                bitrate_kbps=a.kbps,
                channels=a.channels,
                default=a.default,
            )
            for a in alt_audio
        ],
        dropped_rungs=dropped,
    )


def hdr_tonemap(op: Package, video: StreamInfo, notes: list[str]) -> bool:
    """Whether an HDR source is tone-mapped; InvalidJob for the silent wrong combination: a
    ladder's 8-bit rungs still tagged HDR."""
    if video.hdr not in HDR_TRANSFER:
        return False
    if op.hdr != "tonemap":
        raise InvalidJob(f"the input is {HDR_NAMES[video.hdr]}, but a package's rungs are 8-bit "
                         "and would stay tagged HDR, which plays washed out or wrong: ask `hdr` "
                         "'tonemap' for SDR rungs (or transcode to 10-bit HEVC)")  # fmt: skip
    notes.append(f"{HDR_NAMES[video.hdr]} input tone-mapped to SDR (BT.709)")
    return True


def alternate_audio(op: Package, info: ProbeInfo) -> tuple[AltAudio, ...]:
    """The package's alternate audio tracks, each input track resolved (InputError naming what
    the input has when one is missing)."""
    if not op.audio_renditions:
        return ()
    tracks = [s for s in info.streams if s.type == "audio"]
    if not tracks:
        raise InputError("`audio_renditions` asks for audio, but the input has no audio track")
    labels = rendition_names(op.audio_renditions)
    out = []
    for r, label in zip(op.audio_renditions, labels, strict=True):
        if r.language is not None:
            found = [n for n, t in enumerate(tracks) if t.language == r.language]
            if not found:
                have = sorted({t.language or "untagged" for t in tracks})
                raise InputError(f"no audio track in language {r.language!r}; the input has "
                                 f"{', '.join(have)}")  # fmt: skip
            track = found[0]
        else:
            track = r.stream or 0
            if track >= len(tracks):
                raise InputError(f"audio rendition {label!r}: the input has {len(tracks)} audio "
                                 f"track(s), not a track {track}")  # fmt: skip
        # A label left to its default reads as the language's name (`English`, not `eng`).
        name = r.name or (hls_language(r.language)[1] if r.language else None) or label
        out.append(AltAudio(track=track, kbps=r.bitrate_kbps, language=r.language or
                            tracks[track].language, channels=CHANNELS.get(r.layout or ""),
                            name=name, default=r.default))  # fmt: skip
    if not any(a.default for a in out):  # players need one to start with: the first
        out[0] = replace(out[0], default=True)
    if len({a.name for a in out}) < len(out):  # two codes with one display name (fra, fre)
        out = [replace(a, name=f"{a.name} {k + 1}") for k, a in enumerate(out)]
    return tuple(out)


def _name_audio(tmp: Path, videos: int, alt_audio: tuple[AltAudio, ...]) -> None:
    master = tmp / "master.m3u8"
    master.write_text(with_audio_names(master.read_text(), videos, alt_audio))


def _subtitle_tracks(op: Package, info: ProbeInfo) -> tuple[tuple[StreamInfo, ...], list[str]]:
    """The text tracks that become WebVTT renditions, and notes for every track left out."""
    texts, notes = rendition_tracks(op.subtitles, info)
    if op.dash and op.hls and texts:
        notes.append("the HLS playlists written beside DASH carry no subtitles (the manifest "
                     "does; an HLS-only package's playlists do)")  # fmt: skip
    return texts, notes


async def add_hls_subtitles(
    ctx: JobContext, tmp: Path, tracks: list[StreamInfo], duration_s: float
) -> None:
    """The WebVTT files ffmpeg wrote into the HLS package `tmp` (webvtt_outputs) made
    renditions: a playlist each, mapped onto the segments' clock, named in the master playlist
    (the per-title ladder's HLS package takes them the same way)."""
    start = await _picture_start(ctx, tmp)
    await asyncio.to_thread(_add_subtitles, tmp, tracks, duration_s, start)


async def _picture_start(ctx: JobContext, tmp: Path) -> float:
    """Where the first segment's picture starts, which is where the source's time 0 went: the
    mpegts muxer starts at 1.4 s, and both segment types add the encoder's reordering delay.
    The first variant's playlist names its segments (one variant's init segment is `init.mp4`,
    several variants' `init_N.mp4`)."""
    variant = tmp / "stream_0"
    try:
        init, segment = first_segment(await asyncio.to_thread((variant / "index.m3u8").read_text))
    except ValueError as exc:
        raise JobError(f"cannot find the first segment for the WebVTT renditions: {exc}") from exc
    if init is None:
        first, fmt = variant / segment, "mpegts"
    else:  # a fragment reads only after its init segment
        first, fmt = ctx.scratch / "first-segment.mp4", "mp4"
        await asyncio.to_thread(_join, first, variant / init, variant / segment)
    argv = [ctx.tools.ffmpeg, "-hide_banner", "-nostdin", "-protocol_whitelist", "file"]
    done = await capture([*argv, "-f", fmt, "-i", ffmpeg_arg(first)], 60.0)
    start = video_start(done.stderr.decode(errors="replace"))
    if start is None:
        raise JobError("cannot read the first segment's start time for the WebVTT renditions")
    return start


def _join(dest: Path, *parts: Path) -> None:
    dest.write_bytes(b"".join(part.read_bytes() for part in parts))


def _add_dash_subtitles(tmp: Path, tracks: list[StreamInfo]) -> None:
    mpd = tmp / "manifest.mpd"
    try:
        mpd.write_text(with_dash_subtitles(mpd.read_text(), tracks))
    except ValueError as exc:
        raise JobError(f"cannot add subtitles to the DASH manifest: {exc}") from exc


def _add_subtitles(tmp: Path, tracks: list[StreamInfo], duration_s: float, start: float) -> None:
    """A playlist per WebVTT file ffmpeg wrote, each file mapped onto the segments' clock, and
    their renditions in the master playlist."""
    for k in range(len(tracks)):
        (tmp / f"subs_{k}.m3u8").write_text(vtt_playlist(k, duration_s))
        vtt = tmp / f"subs_{k}.vtt"
        vtt.write_text(with_timestamp_map(vtt.read_text(), start))
    master = tmp / "master.m3u8"
    master.write_text(with_subtitles(master.read_text(), tracks))


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
    rename_dir_into_place(tmp, dest, "package")
    return files
