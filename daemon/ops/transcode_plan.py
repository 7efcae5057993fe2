"""What a transcode settles against its probed input before any encode: the video stream, the
trim and crop against the picture and duration, the encoders the pixel format allows, and the
overlay image (opened like an input: under the roots or downloaded, then probed within limits).

Every refusal here is permanent (InvalidJob/InputError): no node would answer differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import msgspec

from daemon.errors import InputError, InvalidJob
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess, MediaJob, open_input
from daemon.media.limits import guard_args
from daemon.ops.encoders import family_of
from daemon.ops.subtitles import NO_SUBTITLES, TEXT_ENCODER, Subtitles, plan_subtitles
from daemon.ops.transcode_args import Extra
from daemon.ops.videograph import SDR, Colour, output_pix_fmt
from schemas.jobs import JobSpec
from schemas.operations import Transcode
from schemas.results import ProbeInfo, StreamInfo
from schemas.videoopts import HDR_CODECS, chroma_420, is_ten_bit

#: Demuxers an overlay image may be read with: still-image formats only.
IMAGE_DEMUXERS = ["png_pipe", "jpeg_pipe", "webp_pipe"]


@dataclass(frozen=True, slots=True)
class Plan:
    #: None for an output without video.
    video: StreamInfo | None
    #: Seconds of output, for progress and the result (the trimmed length when trimmed).
    duration_s: float | None
    ten_bit: bool
    overlay: Extra | None = None
    colour: Colour | None = None
    notes: tuple[str, ...] = ()
    #: Per output audio track, its filter chain ("" none): two-pass loudness (daemon.ops.loudness).
    audio_filters: tuple[str, ...] = ()
    #: Where the encode runs on the job's 0..100 progress scale (loudness passes take the rest).
    span: tuple[float, float] = (0.0, 100.0)
    subtitles: Subtitles = NO_SUBTITLES


def plan(op: Transcode, info: ProbeInfo) -> Plan:
    duration = trimmed(op, info.duration_s)
    subs = plan_subtitles(op, info)
    if op.video_codec == "none":
        _check_audio_stream(op, info)
        return Plan(None, duration, False, notes=subs.notes, subtitles=subs)
    videos = [s for s in info.streams if s.type == "video"]
    if op.video_stream >= len(videos):
        hint = ""
        if not videos and any(s.type == "audio" for s in info.streams):
            hint = "; for audio only, name an .m4a, .ogg or .mp3 output (or set codec 'none')"
        raise InputError(
            f"input has no video stream #{op.video_stream} ({len(videos)} found){hint}"
        )
    video = videos[op.video_stream]
    if op.crop is not None and video.width and video.height:
        c = op.crop
        if c.x + c.width > video.width or c.y + c.height > video.height:
            raise InvalidJob(f"crop {c.width}x{c.height} at ({c.x}, {c.y}) falls outside the "
                             f"{video.width}x{video.height} picture")  # fmt: skip
    ten_bit = (video.bit_depth or 8) > 8
    colour, notes = hdr_colour(op, video, ten_bit)
    if colour is not None and colour.tonemap:
        ten_bit = False  # tone-mapped SDR is 8-bit unless `pix_fmt` asks otherwise
    return Plan(video, duration, ten_bit, colour=colour, notes=notes + subs.notes, subtitles=subs)


def blind_plan(op: Transcode) -> Plan | None:
    """The plan to start the encode on while the input is probed, else None. Audio only: the
    plan no probe can change (no video stream, colour or pixel format to settle, and a
    container that holds no subtitles). Video: the plan of the common input (8-bit SDR, no
    subtitle track), whatever its size and codec; a 10-bit or HDR input, or one with subtitles
    to keep, settles on another command. Either way the probe's plan's command is compared
    with this one's before the encode is kept (daemon.ops.transcode). None for what needs
    the probe before any run: two loudness passes, an overlay image, burnt-in subtitles."""
    if op.loudness is not None or op.overlay is not None or op.burn_subtitles is not None:
        return None
    if op.video_codec == "none" and TEXT_ENCODER.get(op.settled_container) is not None:
        return None
    if op.video_codec != "none" and op.video_stream != 0:  # the input has several: probe first
        return None
    return Plan(None, op.duration_seconds, False)


def _check_audio_stream(op: Transcode, info: ProbeInfo) -> None:
    """An output without video must get audio: the stream it names must exist."""
    audios = [s for s in info.streams if s.type == "audio"]
    stream = op.audio_stream or 0
    if op.audio_language is None and stream >= len(audios):
        raise InputError(f"input has no audio stream #{stream} ({len(audios)} found)")


#: The transfer each HDR kind is tagged with (Dolby Vision's base layer is PQ here).
HDR_TRANSFER = {"hdr10": "smpte2084", "hlg": "arib-std-b67", "dolby_vision": "smpte2084"}
HDR_NAMES = {"hdr10": "HDR10 (PQ)", "hlg": "HLG", "dolby_vision": "Dolby Vision"}


def hdr_colour(
    op: Transcode, video: StreamInfo, ten_bit: bool
) -> tuple[Colour | None, tuple[str, ...]]:
    """The output's colour for an HDR source; InvalidJob for the silent wrong combination (HDR
    tags on 8-bit pictures). An SDR source: None (ffmpeg passes its tags through)."""
    if video.hdr not in HDR_TRANSFER:
        return None, ()
    if op.hdr == "tonemap":
        return SDR, (f"{HDR_NAMES[video.hdr]} input tone-mapped to SDR (BT.709)",)
    pix = output_pix_fmt(op, ten_bit)
    if not is_ten_bit(pix):
        raise InvalidJob(
            f"the input is {HDR_NAMES[video.hdr]} but the output would be 8-bit {op.video_codec} "
            f"({pix}) still tagged HDR, which plays washed out or wrong: ask `hdr` 'tonemap' "
            f"for SDR, or keep HDR with a 10-bit {'/'.join(HDR_CODECS)} output"
        )
    keep = Colour("bt2020", HDR_TRANSFER[video.hdr], "bt2020nc")
    if video.hdr == "dolby_vision":
        return keep, ("Dolby Vision metadata is not carried over: the output is its HDR10 base",)
    return keep, ()


def trimmed(op: Transcode, duration: float | None) -> float | None:
    start = op.start_seconds or 0.0
    if duration is None:
        return op.duration_seconds
    if start >= duration:
        raise InvalidJob(
            f"`start_seconds` {start:g} is at or past the input's end ({duration:g} s)"
        )
    left = duration - start
    return min(left, op.duration_seconds) if op.duration_seconds is not None else left


def allowed_encoders(op: Transcode, chain: list[str]) -> list[str]:
    """4:2:2 and 4:4:4 are software-only: hardware encoders take NV12/P010."""
    if op.pix_fmt is None or chroma_420(op.pix_fmt):
        return chain
    soft = [e for e in chain if family_of(e) == "software"]
    if not soft:
        raise InvalidJob(f"`pix_fmt` {op.pix_fmt!r} needs a software encoder; none is usable here")
    return soft


async def open_overlay(ctx: MediaJob, op: Transcode) -> Extra | None:
    """The overlay image as a local file, checked like an input but read by image demuxers."""
    if op.overlay is None:
        return None
    limits = msgspec.structs.replace(
        ctx.media.limits, demuxers=IMAGE_DEMUXERS, require_duration=False
    )
    image_ctx = _ImageJob(ctx.spec, ctx.scratch, ctx.tools, ctx.allowed_roots, ctx.handle,
                          replace(ctx.media, limits=limits))  # fmt: skip
    path, info = await open_input(image_ctx, op.overlay.image, role="overlay")
    if [s.type for s in info.streams] != ["video"]:
        raise InputError("the overlay image must hold exactly one picture stream")
    return Extra(path, tuple(guard_args(limits)))


@dataclass(frozen=True, slots=True)
class _ImageJob:
    """The attempt as media access sees it, with the image demuxer allow-list."""

    spec: JobSpec
    scratch: Path
    tools: FfmpegTools
    allowed_roots: Sequence[Path]
    handle: JobHandle
    media: MediaAccess
