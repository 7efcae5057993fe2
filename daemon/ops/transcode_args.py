"""The transcode argument vector, pure: validated schema values in, ffmpeg argv (sans binary) out.

Inputs and outputs go in as `file:` + absolute path (see daemon.media.paths.ffmpeg_arg); the
muxer is always named with `-f`, because ffmpeg writes to a `.partial` name it cannot guess a
format from.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from daemon.media.paths import ffmpeg_arg
from daemon.ops.encoders import family_of, preset_args, rate_args
from schemas.audioopts import CHANNELS
from schemas.operations import Transcode
from schemas.videoopts import is_ten_bit

MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm", "m4a": "ipod",
          "ogg": "ogg", "mp3": "mp3"}  # fmt: skip
#: Containers of the MP4 family, whose index can go first.
_FASTSTART = ("mp4", "mov", "m4a")
AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}
#: ffmpeg's hwaccel that decodes for each encoder family (QSV decode is left to a later issue).
HW_DECODE = {"nvenc": "cuda", "vaapi": "vaapi"}
#: Quiet the libraries that log to stderr directly (SVT-AV1 prints ~30 info lines per run).
ENCODER_ENV = {"libsvtav1": {"SVT_LOG": "1"}}


@dataclass(frozen=True, slots=True)
class Node:
    """The node facts the argv depends on."""

    threads: int
    hwaccels: AbstractSet[str]
    render_node: str
    #: Options right before `-i` (protocol/format allow-lists, pixel and allocation caps).
    input_guard: tuple[str, ...] = ("-protocol_whitelist", "file")


@dataclass(frozen=True, slots=True)
class Extra:
    """A second input (the overlay image) and the guard options that go right before its `-i`."""

    path: Path
    guard: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Colour:
    """What the output's colour must say: kept HDR tags, or SDR made by tone-mapping."""

    primaries: str
    transfer: str
    matrix: str
    tonemap: bool = False


SDR = Colour("bt709", "bt709", "bt709", tonemap=True)
#: PQ/HLG to linear light, tone-mapped (hable) into BT.709 primaries, back to a BT.709 curve.
TONEMAP = (
    "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,"
    "zscale=t=bt709:m=bt709:r=tv"
)


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
) -> list[str]:
    """`dest` None is a first pass: video only, into the null muxer."""
    family = family_of(encoder)
    threads = str(node.threads)
    args = ["-filter_threads", threads, *hw_input_args(op, family, node)]
    if op.start_seconds:
        args += ["-ss", _clock(op.start_seconds)]  # before -i: seek, then decode from there
    args += ["-threads", threads, *node.input_guard, "-i", ffmpeg_arg(src)]
    if overlay is not None:
        args += ["-filter_complex_threads", threads, *overlay.guard, "-i", ffmpeg_arg(overlay.path)]
    if op.video_codec == "none":
        args += ["-vn"]
    else:
        args += video_graph(op, family, ten_bit, colour)
        args += ["-c:v", encoder, *preset_args(encoder, op.preset, two_pass=pass_no is not None)]
        args += rate_args(encoder, op, pass_no=pass_no, passlog=passlog)
        args += [*gop_args(encoder, op), *profile_args(encoder, op), "-threads", threads]
    if encoder == "libx265":  # x265 sizes its own thread pool; -threads does not bound it
        args += ["-x265-params", ":".join([f"pools={node.threads}", "log-level=warning",
                                           *x265_params(op)])]  # fmt: skip
    if op.duration_seconds is not None:
        args += ["-t", _clock(op.duration_seconds)]
    if dest is None:
        return [*args, "-an", "-f", "null", "-"]
    args += audio_args(op)
    if op.settled_container in _FASTSTART:
        args += ["-movflags", "+faststart"]  # index first: playback starts before the download ends
    return [*args, "-f", MUXERS[op.settled_container], ffmpeg_arg(dest)]


def _clock(seconds: float) -> str:
    """Seconds as ffmpeg's time syntax takes them: fixed point (it reads no `1e-05`)."""
    return f"{seconds:.6f}"


def output_pix_fmt(op: Transcode, ten_bit: bool) -> str:
    """The software pixel format of the output: asked for, implied by the profile, else 4:2:0
    at the source's depth (10-bit H.264 plays almost nowhere, so H.264 stays 8-bit; tone-mapped
    SDR is 8-bit)."""
    if op.pix_fmt is not None:
        return op.pix_fmt
    if op.profile == "main10":
        return "yuv420p10le"
    if op.profile is not None:
        return "yuv420p"
    return "yuv420p10le" if ten_bit and op.video_codec != "h264" else "yuv420p"


def picture_filters(op: Transcode, colour: Colour | None) -> list[str]:
    """Deinterlace, crop, tone-map, scale, frame rate: in that order (crop counts source pixels;
    tone-mapping the cropped picture costs less, and scaling after it filters SDR values)."""
    filters = []
    if op.deinterlace:
        filters.append("bwdif=mode=send_frame:parity=auto:deint=interlaced")
    if op.crop is not None:
        c = op.crop
        filters.append(f"crop={c.width}:{c.height}:{c.x}:{c.y}:exact=1")
    if colour is not None and colour.tonemap:
        filters.append(TONEMAP)
    if op.width and op.height:
        fit = "force_original_aspect_ratio=decrease:force_divisible_by=2"
        filters.append(f"scale={op.width}:{op.height}:{fit}")
    elif op.height:
        filters.append(f"scale=-2:{op.height}")  # -2: keep the aspect ratio, even width
    elif op.width:
        filters.append(f"scale={op.width}:-2")
    if op.fps:
        filters.append(f"fps={op.fps!r}")
    return filters


def format_filters(op: Transcode, family: str, ten_bit: bool, colour: Colour | None) -> list[str]:
    """Tags, then the encoder's pixel format. The frames' tags are what the encoder writes:
    ffmpeg takes colour properties from the frames, so they are set here, not as options."""
    tags = []
    if colour is not None:
        tags.append(f"setparams=color_primaries={colour.primaries}:color_trc={colour.transfer}"
                    f":colorspace={colour.matrix}")  # fmt: skip
    deep = is_ten_bit(output_pix_fmt(op, ten_bit))
    match family:
        case "qsv":
            return [*tags, f"format={'p010le' if deep else 'nv12'}", "hwupload=extra_hw_frames=64"]
        case "vaapi":
            return [*tags, f"format={'p010' if deep else 'nv12'}", "hwupload"]
        case "nvenc":
            return [*tags, f"format={'p010le' if deep else 'yuv420p'}"]
    return [*tags, f"format={output_pix_fmt(op, ten_bit)}"]


def video_filters(op: Transcode, family: str, ten_bit: bool, colour: Colour | None) -> list[str]:
    return [*picture_filters(op, colour), *format_filters(op, family, ten_bit, colour)]


_CORNERS = {
    "top-left": ("{m}", "{m}"),
    "top-right": ("W-w-{m}", "{m}"),
    "bottom-left": ("{m}", "H-h-{m}"),
    "bottom-right": ("W-w-{m}", "H-h-{m}"),
    "center": ("(W-w)/2", "(H-h)/2"),
}


def video_graph(op: Transcode, family: str, ten_bit: bool, colour: Colour | None) -> list[str]:
    """`-vf` for one input; with an overlay, a complex graph whose second input is the image
    (one frame, repeated to the end by overlay's default eof_action)."""
    if op.overlay is None:
        return [
            "-map",
            f"0:v:{op.video_stream}",
            "-vf",
            ",".join(video_filters(op, family, ten_bit, colour)),
        ]
    o = op.overlay
    x, y = (part.format(m=o.margin) for part in _CORNERS[o.position])
    base = ",".join(picture_filters(op, colour)) or "null"
    image = f"scale={o.width}:-1," if o.width else ""
    after = ",".join(format_filters(op, family, ten_bit, colour))
    graph = (
        f"[0:v:{op.video_stream}]{base}[base];[1:v]{image}format=rgba[mark];"
        f"[base][mark]overlay=x={x}:y={y}:format=auto,{after}[vout]"
    )
    return ["-filter_complex", graph, "-map", "[vout]"]


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


def hw_input_args(op: Transcode, family: str, node: Node) -> list[str]:
    """Device set-up before `-i`, and hardware decode where the node verified the hwaccel."""
    decode = op.hw_decode and HW_DECODE.get(family) in node.hwaccels
    match family:
        case "vaapi":
            args = ["-init_hw_device", f"vaapi=va:{node.render_node}", "-filter_hw_device", "va"]
            return args + (["-hwaccel", "vaapi", "-hwaccel_device", "va"] if decode else [])
        case "qsv":
            device = f"qsv=hw:hw,child_device={node.render_node}"
            return ["-init_hw_device", device, "-filter_hw_device", "hw"]
        case "nvenc" if decode:
            # Decoded frames come back to system memory, so the software filters still apply.
            return ["-hwaccel", "cuda"]
    return []


def audio_args(op: Transcode) -> list[str]:
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
    return args
