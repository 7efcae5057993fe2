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
from schemas.operations import Transcode

MUXERS = {"mp4": "mp4", "mov": "mov", "mkv": "matroska", "webm": "webm"}
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
) -> list[str]:
    """`dest` None is a first pass: video only, into the null muxer."""
    family = family_of(encoder)
    threads = str(node.threads)
    args = ["-filter_threads", threads, *hw_input_args(op, family, node)]
    args += ["-threads", threads, *node.input_guard, "-i", ffmpeg_arg(src)]
    args += ["-map", f"0:v:{op.video_stream}", "-vf", ",".join(video_filters(op, family, ten_bit))]
    args += ["-c:v", encoder, *preset_args(encoder, op.preset, two_pass=pass_no is not None)]
    args += rate_args(encoder, op, pass_no=pass_no, passlog=passlog)
    args += ["-threads", threads]
    if encoder == "libx265":  # x265 sizes its own thread pool; -threads does not bound it
        args += ["-x265-params", f"pools={node.threads}:log-level=warning"]
    if dest is None:
        return [*args, "-an", "-f", "null", "-"]
    args += audio_args(op)
    if op.settled_container in ("mp4", "mov"):
        args += ["-movflags", "+faststart"]  # index first: playback starts before the download ends
    return [*args, "-f", MUXERS[op.settled_container], ffmpeg_arg(dest)]


def video_filters(op: Transcode, family: str, ten_bit: bool) -> list[str]:
    filters = []
    if op.width and op.height:
        fit = "force_original_aspect_ratio=decrease:force_divisible_by=2"
        filters.append(f"scale={op.width}:{op.height}:{fit}")
    elif op.height:
        filters.append(f"scale=-2:{op.height}")  # -2: keep the aspect ratio, even width
    elif op.width:
        filters.append(f"scale={op.width}:-2")
    if op.fps:
        filters.append(f"fps={op.fps!r}")
    # 10-bit H.264 plays almost nowhere; other codecs keep a 10-bit source's depth.
    deep = ten_bit and op.codec != "h264"
    match family:
        case "qsv":
            filters += [f"format={'p010le' if deep else 'nv12'}", "hwupload=extra_hw_frames=64"]
        case "vaapi":
            filters += [f"format={'p010' if deep else 'nv12'}", "hwupload"]
        case "nvenc":
            filters.append(f"format={'p010le' if deep else 'yuv420p'}")
        case _:
            filters.append(f"format={'yuv420p10le' if deep else 'yuv420p'}")
    return filters


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
    # The trailing `?` keeps a silent input from failing the job.
    mapping = ["-map", f"0:a:{op.audio_stream}?"]
    if audio == "copy":
        return [*mapping, "-c:a", "copy"]
    encoder = AUDIO_ENCODERS[audio]
    return [*mapping, "-c:a", encoder, "-b:a", f"{op.audio_bitrate_kbps}k"]
