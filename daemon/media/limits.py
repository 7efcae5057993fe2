"""Input limits, checked before heavy work, and the guard options every ffmpeg input runs under.

Two layers. Before ffmpeg reads an input for real, the file must be a regular file under the size
cap (a FIFO or device would block or never end) and its probe must stay within the configured
pixels, duration and stream count; an input outside them fails permanently (InputError), since
no retry on any node would change the answer. Then every ffmpeg/ffprobe that opens an input gets
`guard_args`: `-protocol_whitelist file` (nothing but local files), `-format_whitelist` (no
playlist or concat demuxer that would open further files, no generators) and `-max_pixels`
(ffmpeg's own per-frame cap, for a stream whose size changes mid-file).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from daemon.config import MediaSettings
from daemon.errors import InputError
from schemas.results import ProbeInfo

#: Demuxer name parts each common extension may be read with (the probe's container names the
#: demuxer, e.g. `mov,mp4,m4a,3gp,3g2,mj2`); an extension not listed here is not checked.
CLAIMS: dict[str, frozenset[str]] = {
    ext: frozenset(names)
    for exts, names in [
        ((".mp4", ".m4v", ".mov", ".m4a", ".3gp", ".3g2"), ("mov", "mp4")),
        ((".mkv", ".webm", ".mka"), ("matroska", "webm")),
        ((".ts", ".m2ts", ".mts"), ("mpegts",)),
        ((".mpg", ".mpeg", ".vob"), ("mpeg",)),
        ((".avi",), ("avi",)),
        ((".flv",), ("flv",)),
        ((".mxf",), ("mxf",)),
        ((".y4m",), ("yuv4mpegpipe",)),
        ((".h264", ".264"), ("h264",)),
        ((".hevc", ".h265", ".265"), ("hevc",)),
        ((".ivf",), ("ivf",)),
        ((".wav",), ("wav",)),
        ((".mp3",), ("mp3",)),
        ((".ogg", ".ogv", ".oga", ".opus"), ("ogg",)),
        ((".flac",), ("flac",)),
        ((".aac",), ("aac",)),
    ]
    for ext in exts
}


def guard_args(limits: MediaSettings) -> list[str]:
    """Input options for one `-i` (place them right before it)."""
    args = ["-protocol_whitelist", "file", "-format_whitelist", ",".join(limits.demuxers)]
    return [*args, "-max_pixels", str(limits.max_pixels)]


def global_args(limits: MediaSettings) -> list[str]:
    """Options for the whole ffmpeg/ffprobe run (before any input)."""
    return ["-max_alloc", str(limits.max_alloc_mb << 20)] if limits.max_alloc_mb else []


def check_file(path: Path, limits: MediaSettings) -> int:
    """The file's size; InputError if it is missing, not a regular file, or over the cap.

    Blocking (a stat): call it in a thread.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise InputError(f"input {path.name!r} does not exist") from exc
    except OSError as exc:
        raise InputError(f"cannot read input {path.name!r}: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"input {path.name!r} is not a regular file (a pipe or device?)")
    if st.st_size > limits.max_input_bytes:
        raise InputError(f"input is {st.st_size} bytes, over the limit of {limits.max_input_bytes}")
    if st.st_size == 0:
        raise InputError(f"input {path.name!r} is empty")
    return st.st_size


def check_probe(info: ProbeInfo, limits: MediaSettings, suffix: str = "") -> None:
    """Refuse a probed input beyond the limits, or not what its extension claims (InputError)."""
    allowed = CLAIMS.get(suffix.lower())
    if limits.check_extension and allowed and not allowed & set(info.container.split(",")):
        raise InputError(
            f"input named {suffix!r} holds {info.container.split(',')[0]!r} data: "
            "its container does not match what the name claims"
        )
    if not info.streams:
        raise InputError("input has no streams")
    if len(info.streams) > limits.max_streams:
        raise InputError(
            f"input has {len(info.streams)} streams, over the limit of {limits.max_streams}"
        )
    for s in info.streams:
        pixels = (s.width or 0) * (s.height or 0)
        if s.type == "video" and pixels > limits.max_pixels:
            raise InputError(
                f"stream #{s.index} is {s.width}x{s.height} ({pixels} pixels), over the limit "
                f"of {limits.max_pixels} pixels per frame"
            )
    if info.duration_s is None:
        if limits.require_duration:
            raise InputError("input has no known duration (it may never end): refused")
    elif info.duration_s > limits.max_duration_s:
        raise InputError(
            f"input lasts {info.duration_s:.0f} s, over the limit of {limits.max_duration_s:.0f} s"
        )
