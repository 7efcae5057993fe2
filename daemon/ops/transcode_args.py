"""The transcode argument vector, pure: validated schema values in, ffmpeg argv (sans binary) out.

Inputs and outputs go in as `file:` + absolute path (see daemon.media.paths.ffmpeg_arg); the
muxer is always named with `-f`, because ffmpeg writes to a `.partial` name it cannot guess a
format from.
"""

from __future__ import annotations

from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from daemon.media.paths import ffmpeg_arg
from daemon.ops.encoders import family_of, preset_args, rate_args
from daemon.ops.subtitles import (
    NO_SUBTITLES,
    Subtitles,
    burn_filter,
    subtitle_args,
    subtitle_inputs,
)
from daemon.ops.videograph import Colour, video_graph
from schemas.audioopts import CHANNELS
from schemas.operations import Transcode

MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "m4a": "ipod",
          "ogg": "ogg", "mp3": "mp3"}  # fmt: skip
#: Containers of the MP4 family, whose index can go first.
_FASTSTART = ("mp4", "mov", "m4a")
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}
#: ffmpeg's hwaccel that decodes for each encoder family.
HW_DECODE = {"nvenc": "cuda", "qsv": "qsv", "vaapi": "vaapi"}
#: The QSV decoder of each source codec (ffprobe's name). The qsv hwaccel decodes only through
#: these: ffmpeg's own decoders take cuda and vaapi but not qsv, so without one named before
#: `-i` a `-hwaccel qsv` run silently decodes in software. Other codecs decode in software.
QSV_DECODERS = {"h264": "h264_qsv", "hevc": "hevc_qsv", "av1": "av1_qsv", "vp9": "vp9_qsv",
                "vp8": "vp8_qsv", "mpeg2video": "mpeg2_qsv", "vc1": "vc1_qsv"}  # fmt: skip
#: Quiet the libraries that log to stderr directly (SVT-AV1 prints ~30 info lines per run).
ENCODER_ENV = {"libsvtav1": {"SVT_LOG": "1"}}


@dataclass(frozen=True, slots=True)
class Node:
    """The node facts the argv depends on."""

    threads: int
    hwaccels: AbstractSet[str]
    render_node: str
    #: NVML index of the GPU decode and NVENC encode are pinned to; None: the driver's pick.
    gpu: int | None = None
    #: Options right before `-i` (protocol/format allow-lists, pixel and allocation caps).
    input_guard: tuple[str, ...] = ("-protocol_whitelist", "file")


@dataclass(frozen=True, slots=True)
class Extra:
    """A second input (the overlay image) and the guard options that go right before its `-i`."""

    path: Path
    guard: tuple[str, ...]


def transcode_args(
    op: Transcode,
    encoder: str,
    src: Path,
    dest: Path | None,
    node: Node,
    *,
    ten_bit: bool = False,
    pass_no: int | None = None,
    passlog: Path = Path("/nonexistent/passlog"),
    overlay: Extra | None = None,
    colour: Colour | None = None,
    audio_filters: Sequence[str] = (),
    subtitles: Subtitles = NO_SUBTITLES,
    src_codec: str | None = None,
) -> list[str]:
    """`dest` None is a first pass: video only, into the null muxer. `audio_filters`: a filter
    chain per output audio track ("" none). `src_codec`: the video stream's codec (ffprobe's
    name), which picks the QSV decoder."""
    family = family_of(encoder)
    threads = str(node.threads)
    args = ["-filter_threads", threads, *hw_input_args(op, family, node, src_codec)]
    if op.start_seconds:
        args += ["-ss", _clock(op.start_seconds)]  # before -i: seek, then decode from there
    args += ["-threads", threads, *node.input_guard, "-i", ffmpeg_arg(src)]
    if overlay is not None:
        args += ["-filter_complex_threads", threads, *overlay.guard, "-i", ffmpeg_arg(overlay.path)]
    if dest is not None:
        args += subtitle_inputs(subtitles, op.start_seconds)
    if op.video_codec == "none":
        args += ["-vn"]
    else:
        burn = None
        if subtitles.burn is not None:
            burn = burn_filter(src, subtitles.burn, op.start_seconds)
        args += video_graph(op, family, ten_bit, colour, burn)
        args += ["-c:v", encoder, *preset_args(encoder, op.preset, two_pass=pass_no is not None)]
        args += gpu_args(family, node)
        args += rate_args(encoder, op, pass_no=pass_no, passlog=passlog)
        args += [*gop_args(encoder, op), *profile_args(encoder, op), "-threads", threads]
    if encoder == "libx265":  # x265 sizes its own thread pool; -threads does not bound it
        args += ["-x265-params", ":".join([f"pools={node.threads}", "log-level=warning",
                                           *x265_params(op)])]  # fmt: skip
    if op.duration_seconds is not None:
        args += ["-t", _clock(op.duration_seconds)]
    if dest is None:
        return [*args, "-an", "-f", "null", "-"]
    args += audio_args(op, audio_filters)
    args += subtitle_args(subtitles, first_input=2 if overlay is not None else 1)
    if op.settled_container in _FASTSTART:
        args += ["-movflags", "+faststart"]  # index first: playback starts before the download ends
    return [*args, "-f", MUXERS[op.settled_container], ffmpeg_arg(dest)]


def _clock(seconds: float) -> str:
    """Seconds as ffmpeg's time syntax takes them: fixed point (it reads no `1e-05`)."""
    return f"{seconds:.6f}"


def gop_args(encoder: str, op: Transcode) -> list[str]:
    """A fixed keyframe interval: max and min distance both `gop_size`, scene cuts add none."""
    if op.gop_size is None or encoder == "libx265":  # x265 takes them in -x265-params
        return []
    n = str(op.gop_size)
    args = ["-g", n]
    match encoder:
        case "libx264":
            args += ["-keyint_min", n, "-sc_threshold", "0"]
            args += ["-flags", "+cgop"] if op.closed_gop else []
        case "libvpx-vp9":
            args += ["-keyint_min", n]
        case _ if family_of(encoder) == "nvenc":
            args += ["-no-scenecut", "1"]  # NVENC's GOPs are closed already
    return args


def x265_params(op: Transcode) -> list[str]:
    params = []
    if op.gop_size is not None:
        params += [f"keyint={op.gop_size}", f"min-keyint={op.gop_size}", "scenecut=0"]
        params += ["open-gop=0"] if op.closed_gop else []
    if op.level is not None:
        params.append(f"level-idc={op.level}")
    return params


def profile_args(encoder: str, op: Transcode) -> list[str]:
    args = []
    if op.profile is not None:
        vaapi_baseline = family_of(encoder) == "vaapi" and op.profile == "baseline"
        args += ["-profile:v", "constrained_baseline" if vaapi_baseline else op.profile]
    if op.level is not None and encoder != "libx265":
        args += ["-level:v", op.level]
    return args


def qsv_decoder(
    op: Transcode, family: str, hwaccels: AbstractSet[str], src_codec: str | None
) -> str | None:
    """The QSV decoder a QSV encode decodes with: where decode on the device is asked for
    (`hw_decode`), the node verified the qsv hwaccel and the source's codec has one."""
    if family != "qsv" or not op.hw_decode or "qsv" not in hwaccels:
        return None
    return QSV_DECODERS.get(src_codec or "")


def hw_input_args(
    op: Transcode, family: str, node: Node, src_codec: str | None = None
) -> list[str]:
    """Device set-up before `-i`, and hardware decode where the node verified the hwaccel.
    VAAPI and QSV decode without `-hwaccel_output_format`: ffmpeg downloads the frames to system
    memory (nv12/p010), so the software filters (crop, deinterlace, overlay, burn-in, tone-map)
    apply as after a software decode, and the graph uploads the result (videograph)."""
    decode = op.hw_decode and HW_DECODE.get(family) in node.hwaccels
    match family:
        case "vaapi":
            args = ["-init_hw_device", f"vaapi=va:{node.render_node}", "-filter_hw_device", "va"]
            return args + (["-hwaccel", "vaapi", "-hwaccel_device", "va"] if decode else [])
        case "qsv":
            device = f"qsv=hw:hw,child_device={node.render_node}"
            args = ["-init_hw_device", device, "-filter_hw_device", "hw"]
            decoder = qsv_decoder(op, family, node.hwaccels, src_codec)
            if decoder is None:
                return args
            # The decoder is named for the mapped stream only (an attached picture, say a PNG
            # cover, keeps its own); it runs on the placed device (`hw`).
            return [*args, "-hwaccel", "qsv", "-hwaccel_device", "hw",
                    f"-c:v:{op.video_stream}", decoder]  # fmt: skip
        case "nvenc" if decode:
            # Decoded frames come back to system memory, so the software filters still apply.
            pin = ["-hwaccel_device", str(node.gpu)] if node.gpu is not None else []
            return ["-hwaccel", "cuda", *pin]
    return []


def gpu_args(family: str, node: Node) -> list[str]:
    """NVENC on the placed GPU (CUDA_DEVICE_ORDER=PCI_BUS_ID makes CUDA count as NVML does)."""
    return ["-gpu", str(node.gpu)] if family == "nvenc" and node.gpu is not None else []


def audio_args(op: Transcode, filters: Sequence[str] = ()) -> list[str]:
    audio = op.settled_audio
    if op.audio_stream is None or audio == "none":
        return ["-an"]
    if op.audio_tracks == "all":
        mapping = ["-map", "0:a" if op.video_codec == "none" else "0:a?"]
    elif op.audio_language is not None:
        # No `?`: a job that names a language fails when the input has no such track.
        mapping = ["-map", f"0:a:m:language:{op.audio_language}"]
    else:
        # The trailing `?` keeps a silent input from failing a job with video.
        optional = "?" if op.video_codec != "none" else ""
        mapping = ["-map", f"0:a:{op.audio_stream}{optional}"]
    if audio == "copy":
        return [*mapping, "-c:a", "copy"]
    args = [*mapping, "-c:a", AUDIO_ENCODERS[audio], "-b:a", f"{op.audio_bitrate_kbps}k"]
    if op.audio_layout is not None:
        args += ["-ac", str(CHANNELS[op.audio_layout])]
    if op.audio_sample_rate is not None:
        args += ["-ar", str(op.audio_sample_rate)]
    for n, chain in enumerate(filters):
        args += [f"-filter:a:{n}", chain] if chain else []
    return args
