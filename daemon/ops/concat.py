"""The concat operation: join video chunks by stream copy, mux the audio in, verify the result.

Each chunk is opened like any input (daemon.media.access: under the roots, or downloaded into
scratch), so every one is size- and probe-checked before ffmpeg reads it, and they must agree on
codec, picture size and pixel format. The join is ffmpeg's concat demuxer over a list this module
writes in scratch (its only entries are the checked local files; the demuxer is allowed for this
one run), `-c copy`, with the audio file as a second input. Each chunk was probed without the
concat demuxer, so a chunk that is itself a list (naming other files) is refused before the join.

Then the joined file (still under its partial name, so a failed check leaves no output) is
verified:

- its packets (`framecrc`: timestamps and flags, no decode) give the video's frame count and
  length, each chunk border's gap and whether it starts on a keyframe, and the audio's length;
- a full decode (the null muxer) must log no error and give as many frames as the chunks hold;
- the video must last the chunks' sum within half a frame, every border must start on a
  keyframe with no gap or overlap over half a frame, and audio and video must end within
  `max_av_drift_ms`.

A failed check is an InputError (permanent: a retry of the join would find the same chunks)
whose reason says which measure was off.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import aiofiles

from daemon.errors import InputError, InvalidJob, JobError
from daemon.ffmpeg.run import run_ffmpeg
from daemon.media.access import open_input, output_path
from daemon.media.limits import global_args
from daemon.media.paths import ffmpeg_arg
from daemon.ops.context import JobContext
from daemon.ops.outputs import OutputSet
from daemon.ops.probe_op import MAX_ERROR_LINES, decode_all
from schemas.operations import Concat, output_extension
from schemas.results import ChunkBorder, ConcatReport, JobResult, ProbeInfo, StreamInfo

MUXERS = {"mp4": "mp4", "m4v": "mp4", "mov": "mov", "mkv": "matroska"}
_FASTSTART = ("mp4", "mov")
_KEY, _DISCARD = 0x1, 0x4
#: The stream properties every chunk must share with the first for a stream copy to join them.
_ALIKE = ("codec", "width", "height", "pix_fmt")


async def run_concat(ctx: JobContext) -> JobResult:
    started = time.monotonic()
    spec, op = ctx.spec, ctx.spec.operation
    assert isinstance(op, Concat) and spec.output is not None  # JobSpec requires an output
    dest = await output_path(ctx, spec.output)
    chunks: list[Path] = []
    first: StreamInfo | None = None  # the first chunk's video: the others must match it
    size = 0
    for i, uri in enumerate(op.chunks):
        path, info = await _open(ctx, uri, f"chunk{i:03d}", f"chunk {i}")
        first = _check_alike(first, _video(info, f"chunk {i}"), i)
        chunks.append(path)
        size += info.size_bytes or 0
    assert first is not None  # the schema asks for at least one chunk
    audio: Path | None = None
    if op.audio is not None:
        audio, info = await _open(ctx, op.audio, "audio", "audio")
        if not any(s.type == "audio" for s in info.streams):
            raise InputError("the audio input has no audio stream")
        size += info.size_bytes or 0
    if dest in chunks or dest == audio:
        raise InvalidJob("output is the same file as one of the inputs")
    chunk_frames: list[int] = []
    chunks_seconds = 0.0
    for i, path in enumerate(chunks):  # one chunk's packets at a time: a long one has many
        found = await _packets(ctx, path, f"chunk {i}", audio=False)
        chunk_frames.append(len(found.video))
        chunks_seconds += found.video_seconds
    ext = output_extension(spec.output)
    async with OutputSet(ctx.job_key, ctx.attempt, ctx.may_commit) as outputs:
        partial = await outputs.stage(dest, uri=spec.output)
        listing = await _write_list(ctx.scratch / "chunks.ffconcat", chunks)
        await _join(ctx, listing, audio, partial, ext, chunks_seconds, first.codec)
        report = await verify(ctx, partial, chunk_frames, chunks_seconds, op, audio is not None)
        ctx.handle.check()
        files = await outputs.commit()
    wall = time.monotonic() - started
    return JobResult(
        wall_seconds=wall,
        media_seconds=report.video_seconds,
        realtime_factor=round(report.video_seconds / wall, 3) if wall > 0 else None,
        input_size_bytes=size,
        outputs=files,
        concat=report,
    )


async def _open(ctx: JobContext, uri: str, role: str, what: str) -> tuple[Path, ProbeInfo]:
    try:
        return await open_input(ctx, uri, role)
    except JobError as exc:  # name the part: "does not exist" alone does not say which
        exc.reason = f"{what}: {exc.reason}"
        exc.args = (exc.reason,)
        raise


def _video(info: ProbeInfo, what: str) -> StreamInfo:
    for stream in info.streams:
        if stream.type == "video":
            return stream
    raise InputError(f"{what} has no video stream")


def _check_alike(first: StreamInfo | None, video: StreamInfo, index: int) -> StreamInfo:
    if first is None:
        return video
    for name in _ALIKE:
        mine, theirs = getattr(video, name), getattr(first, name)
        if mine != theirs:
            raise InvalidJob(f"chunk {index} has {name} {mine}, chunk 0 {theirs}: chunks joined "
                             "without re-encoding must be encoded alike")  # fmt: skip
    return first


def list_text(chunks: list[Path]) -> str:
    """An ffconcat script naming each chunk as `file:<absolute path>`, quoted."""
    lines = ["ffconcat version 1.0"]
    for path in chunks:
        quoted = ffmpeg_arg(path).replace("'", "'\\''")
        lines.append(f"file '{quoted}'")
    return "\n".join(lines) + "\n"


async def _write_list(path: Path, chunks: list[Path]) -> Path:
    async with aiofiles.open(path, "w", encoding="utf-8") as f:
        await f.write(list_text(chunks))
    return path


async def _join(
    ctx: JobContext,
    listing: Path,
    audio: Path | None,
    partial: Path,
    ext: str,
    seconds: float,
    codec: str,
) -> None:
    limits = ctx.media.limits
    # The concat demuxer opens the chunks itself: it inherits both allow-lists, and is on the
    # format list for this run only (inputs never get it: it would open files a job names).
    formats = ",".join(["concat", *limits.demuxers])
    args = ["-threads", str(ctx.threads), *global_args(limits), "-f", "concat", "-safe", "0"]
    args += ["-protocol_whitelist", "file", "-format_whitelist", formats]
    args += ["-max_pixels", str(limits.max_pixels), "-i", ffmpeg_arg(listing)]
    if audio is not None:
        args += ctx.media.input_args(audio)
    args += ["-map", "0:v:0", *(["-map", "1:a:0"] if audio is not None else []), "-c", "copy"]
    if MUXERS[ext] in _FASTSTART:
        args += ["-movflags", "+faststart"]
        if codec == "hevc":  # Apple players want the hvc1 sample entry
            args += ["-tag:v", "hvc1"]
    args += ["-f", MUXERS[ext], ffmpeg_arg(partial)]
    await ctx.announce(None, args)
    await run_ffmpeg(
        ctx.tools.ffmpeg,
        args,
        control=ctx.handle,
        on_progress=ctx.progress,
        duration_s=seconds,
        span=(0.0, 40.0),
        progress_interval=ctx.progress_interval,
    )


async def verify(
    ctx: JobContext,
    joined: Path,
    chunk_frames: list[int],
    chunks_seconds: float,
    op: Concat,
    with_audio: bool,
) -> ConcatReport:
    """Measure the joined file; InputError naming the first measure that is off."""
    packets = await _packets(ctx, joined, "the joined file", audio=with_audio)
    try:
        errors, run = await decode_all(ctx, joined, chunks_seconds, span=(40.0, 100.0))
    except JobError as exc:
        raise InputError(f"the joined file does not decode: {exc.reason}",
                         stderr_tail=exc.stderr_tail) from exc  # fmt: skip
    decoded = run.last.frame if run.last is not None and run.last.frame is not None else 0
    report = measure(packets, chunk_frames, chunks_seconds, decoded, len(errors))
    expected = sum(chunk_frames)
    frame_s = chunks_seconds / expected if expected else 0.0
    if errors:
        shown = "; ".join(errors[:3])
        more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
        raise InputError(f"the joined file decodes with {len(errors)} errors: {shown}{more}",
                         stderr_tail="\n".join(errors[:MAX_ERROR_LINES]))  # fmt: skip
    if len(packets.video) != expected or decoded != expected:
        raise InputError(f"the joined file has {len(packets.video)} video packets and decodes to "
                         f"{decoded} frames; the chunks hold {expected} "
                         f"({'+'.join(map(str, chunk_frames))})")  # fmt: skip
    if abs(report.video_seconds - chunks_seconds) > frame_s / 2:
        raise InputError(f"the joined video lasts {report.video_seconds:.3f} s; the chunks "
                         f"{chunks_seconds:.3f} s")  # fmt: skip
    for border in report.borders:
        if not border.keyframe:
            raise InputError(f"chunk {border.chunk} does not start on a keyframe")
        if abs(border.gap_ms) > frame_s * 500:
            raise InputError(f"chunk {border.chunk} starts {border.gap_ms:+.1f} ms from the end "
                             "of the one before (a gap or an overlap)")  # fmt: skip
    if with_audio:
        if report.av_drift_ms is None:
            raise InputError("the joined file has no audio packets")
        if report.av_drift_ms > op.max_av_drift_ms:
            raise InputError(f"audio and video drift {report.av_drift_ms:.1f} ms apart, over "
                             f"max_av_drift_ms {op.max_av_drift_ms:g} (audio "
                             f"{report.audio_seconds:.3f} s, video "
                             f"{report.video_seconds:.3f} s)")  # fmt: skip
    return report


@dataclass(frozen=True, slots=True)
class Packet:
    dts: int
    pts: int
    duration: int
    flags: int


@dataclass
class Packets:
    """One file's video (and audio) packets in decode order, with each stream's time base."""

    video: list[Packet]
    video_tb: Fraction
    audio: list[Packet]
    audio_tb: Fraction

    @property
    def video_seconds(self) -> float:
        return span_seconds(self.video, self.video_tb)


def parse_framecrc(text: str) -> Packets:
    """ffmpeg's framecrc listing of stream 0 (video) and 1 (audio): flags absent mean key."""
    tbs: dict[int, Fraction] = {}
    streams: dict[int, list[Packet]] = {0: [], 1: []}
    for line in text.splitlines():
        if line.startswith("#tb "):
            index, _, value = line[4:].partition(":")
            num, _, den = value.strip().partition("/")
            tbs[int(index)] = Fraction(int(num), int(den))
            continue
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        flags = _KEY
        for extra in fields[6:]:
            if extra.startswith("F=0x"):
                flags = int(extra[4:], 16)
        stream = int(fields[0])
        if stream in streams:
            packet = Packet(int(fields[1]), int(fields[2]), int(fields[3]), flags)
            streams[stream].append(packet)
    if 0 not in tbs:
        raise ValueError("no video stream in the packet listing")
    return Packets(streams[0], tbs[0], streams[1], tbs.get(1, Fraction(1)))


def span_seconds(packets: list[Packet], tb: Fraction) -> float:
    """From the first shown picture or sample to the end of the last (discarded ones left out)."""
    shown = [p for p in packets if not p.flags & _DISCARD]
    if not shown:
        return 0.0
    start = min(p.pts for p in shown)
    end = max(p.pts + p.duration for p in shown)
    return float((end - start) * tb)


def _bounds(packets: list[Packet], tb: Fraction) -> tuple[Fraction, Fraction]:
    shown = [p for p in packets if not p.flags & _DISCARD] or packets
    return min(p.pts for p in shown) * tb, max(p.pts + p.duration for p in shown) * tb


def measure(
    packets: Packets, chunk_frames: list[int], chunks_seconds: float, decoded: int, errors: int
) -> ConcatReport:
    """The report of a joined file's packets: its length, each border, the A/V drift."""
    video = packets.video
    borders = []
    at = 0
    for i, count in enumerate(chunk_frames):
        if i > 0 and at < len(video):
            before = video[max(0, at - chunk_frames[i - 1]) : at]
            mine = video[at : at + count]
            start, _ = _bounds(mine, packets.video_tb)
            _, end = _bounds(before, packets.video_tb)
            borders.append(ChunkBorder(
                chunk=i, at_seconds=float(max(start, Fraction(0))),
                gap_ms=round(float((start - end) * 1000), 3),
                keyframe=bool(mine[0].flags & _KEY),
            ))  # fmt: skip
        at += count
    audio_seconds = drift = None
    if packets.audio and video:
        a_start, a_end = _bounds(packets.audio, packets.audio_tb)
        v_start, v_end = _bounds(video, packets.video_tb)
        audio_seconds = round(float(a_end - a_start), 6)
        drift = round(float(max(abs(a_start - v_start), abs(a_end - v_end)) * 1000), 3)
    return ConcatReport(
        chunks=len(chunk_frames),
        chunk_frames=chunk_frames,
        frames=decoded,
        video_seconds=round(packets.video_seconds, 6),
        chunks_seconds=round(chunks_seconds, 6),
        audio_seconds=audio_seconds,
        av_drift_ms=drift,
        decode_errors=errors,
        borders=borders,
    )


async def _packets(ctx: JobContext, src: Path, what: str, *, audio: bool) -> Packets:
    """`src`'s packets, listed by a stream copy into framecrc (nothing is decoded)."""
    listing = ctx.scratch / "packets.framecrc"
    args = ["-threads", str(ctx.threads), *ctx.media.guard(), "-i", ffmpeg_arg(src)]
    args += ["-map", "0:v:0", *(["-map", "0:a:0"] if audio else [])]
    args += ["-c", "copy", "-f", "framecrc", ffmpeg_arg(listing)]
    try:
        await run_ffmpeg(ctx.tools.ffmpeg, args, control=ctx.handle)
    except JobError as exc:
        raise InputError(f"{what}: its packets cannot be read: {exc.reason}",
                         stderr_tail=exc.stderr_tail) from exc  # fmt: skip
    async with aiofiles.open(listing, encoding="utf-8", errors="replace") as f:
        text = await f.read()
    try:
        found = await asyncio.to_thread(parse_framecrc, text)
    except ValueError as exc:
        raise InputError(f"{what}: unreadable packet listing ({exc})") from exc
    if not found.video:
        raise InputError(f"{what} has no video packets")
    return found
