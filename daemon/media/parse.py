"""Pure parsers from ffprobe's JSON, or from `ffmpeg -i`'s stream banner, to one `ProbeInfo`.

Both give the same structure, field by field, so callers never care which program answered
(the embedded ffmpeg wheel ships no ffprobe). The banner prints rounded values (fps to 4 digits,
duration to 10 ms, bitrates in kb/s): close to ffprobe's, never different in kind.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from schemas.results import ProbeInfo, StreamInfo

HDR_TRANSFERS = {"smpte2084": "hdr10", "arib-std-b67": "hlg"}
DOVI = "dolby_vision"


class _Stream(msgspec.Struct):
    index: int = 0
    codec_type: str = "unknown"
    codec_name: str = "unknown"
    width: int | None = None
    height: int | None = None
    pix_fmt: str | None = None
    avg_frame_rate: str | None = None
    r_frame_rate: str | None = None
    bits_per_raw_sample: str | None = None
    color_transfer: str | None = None
    channels: int | None = None
    sample_rate: str | None = None
    bit_rate: str | None = None
    duration: str | None = None
    side_data_list: list[dict[str, Any]] = []
    tags: dict[str, str] = {}


class _Format(msgspec.Struct):
    format_name: str = "unknown"
    duration: str | None = None
    bit_rate: str | None = None


class _Output(msgspec.Struct):
    streams: list[_Stream] = []
    format: _Format | None = None


def parse_ffprobe_json(data: bytes, size_bytes: int | None) -> ProbeInfo:
    """`ffprobe -print_format json -show_format -show_streams` output; ValueError if malformed."""
    try:
        out = msgspec.json.decode(data, type=_Output)
    except msgspec.DecodeError as exc:
        raise ValueError(f"ffprobe JSON: {exc}") from exc
    fmt = out.format or _Format()
    streams = [_json_stream(s) for s in out.streams]
    return ProbeInfo(
        container=fmt.format_name,
        duration_s=_num(fmt.duration),
        size_bytes=size_bytes,
        bitrate_bps=_int(fmt.bit_rate),
        streams=streams,
    )


def _json_stream(s: _Stream) -> StreamInfo:
    video = s.codec_type == "video"
    rate = _ratio(s.avg_frame_rate) or _ratio(s.r_frame_rate)
    hdr = HDR_TRANSFERS.get(s.color_transfer or "")
    if any("DOVI" in str(d.get("side_data_type", "")) for d in s.side_data_list):
        hdr = DOVI
    return StreamInfo(
        index=s.index,
        type=s.codec_type,
        codec=s.codec_name,
        width=s.width if video else None,
        height=s.height if video else None,
        fps=round(rate, 3) if video and rate else None,
        pix_fmt=s.pix_fmt if video else None,
        bit_depth=(bit_depth(s.pix_fmt) or _int(s.bits_per_raw_sample)) if video else None,
        hdr=hdr if video else None,
        channels=s.channels,
        sample_rate=_int(s.sample_rate),
        bitrate_bps=_int(s.bit_rate),
        duration_s=_num(s.duration),
        language=language_of(s.tags.get("language")),
    )


def language_of(tag: str | None) -> str | None:
    """A track's language tag, None for none or `und` (undetermined)."""
    return tag if tag and tag != "und" else None


_INPUT = re.compile(r"^Input #0, (.+?), from '")
_DURATION = re.compile(r"^ {2}Duration: ([^,]+)(?:, start: [^,]+)?, bitrate: (N/A|\d+ kb/s)")
_STREAM = re.compile(r"^ {2,4}Stream #0:(\d+)(?:\[0x[0-9a-f]+\])?(?:\(([^)]*)\))?: (\w+): (.*)$")
_TAG = re.compile(r"^\[(?:info|verbose)\] ")


def parse_banner(text: str, size_bytes: int | None) -> ProbeInfo:
    """The `Input #0` block of `ffmpeg -i` stderr; ValueError when there is none.

    Callers replace the echoed file name first (it may hold newlines), see daemon.media.probe.
    """
    container: str | None = None
    duration: float | None = None
    bitrate: int | None = None
    streams: list[StreamInfo] = []
    for raw in text.splitlines():
        line = _TAG.sub("", raw)
        if container is None:
            if found := _INPUT.match(line):
                container = found.group(1)
        elif found := _DURATION.match(line):
            duration, bitrate = _clock(found.group(1)), _kbps(found.group(2))
        elif found := _STREAM.match(line):
            index, kind, rest = int(found.group(1)), found.group(3).lower(), found.group(4)
            if all(s.index != index for s in streams):
                streams.append(_banner_stream(index, kind, rest))
                streams[-1].language = language_of(found.group(2))
        elif streams and "DOVI configuration record" in line and streams[-1].type == "video":
            streams[-1].hdr = DOVI
        elif line.startswith(("Output #", "Stream mapping:", "At least one output")):
            break  # the input block is over; later lines describe outputs
    if container is None:
        raise ValueError("ffmpeg printed no input description")
    return ProbeInfo(
        container=container,
        duration_s=duration,
        size_bytes=size_bytes,
        bitrate_bps=bitrate,
        streams=streams,
    )


def _banner_stream(index: int, kind: str, rest: str) -> StreamInfo:
    parts = split_top(rest)
    codec = re.match(r"[A-Za-z0-9_]+", parts[0])
    info = StreamInfo(index=index, type=kind, codec=codec.group(0) if codec else "unknown")
    # A video's pixel format follows the codec, with colour details in parentheses.
    pix = re.fullmatch(r"([a-z][a-z0-9_]*)(?:\((.*)\))?", parts[1]) if len(parts) > 1 else None
    if kind == "video" and pix:
        info.pix_fmt, info.bit_depth = pix.group(1), bit_depth(pix.group(1))
        colour = pix.group(2) or ""
        info.hdr = next((v for k, v in HDR_TRANSFERS.items() if k in colour), None)
    for part in parts[1:]:
        if (size := re.match(r"(\d+)x(\d+)\b", part)) and kind == "video":
            info.width, info.height = int(size.group(1)), int(size.group(2))
        elif rate := re.fullmatch(r"([\d.]+)(k?) (fps|tbr)", part):
            if info.fps is None and kind == "video":
                info.fps = round(float(rate.group(1)) * (1000 if rate.group(2) else 1), 3)
        elif kbps := re.match(r"(\d+) kb/s", part):
            info.bitrate_bps = int(kbps.group(1)) * 1000
        elif hz := re.fullmatch(r"(\d+) Hz", part):
            info.sample_rate = int(hz.group(1))
        elif kind == "audio" and info.sample_rate and info.channels is None:
            info.channels = channels_of(part)
    return info


def split_top(text: str) -> list[str]:
    """Split on ", " outside parentheses and brackets: `yuv420p(tv, bt709)` stays whole."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += (ch in "([") - (ch in ")]")
        if ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


_NAMED_LAYOUTS = {"mono": 1, "stereo": 2, "downmix": 2, "quad": 4, "hexagonal": 6, "octagonal": 8}


def channels_of(layout: str) -> int | None:
    """`stereo` 2, `5.1(side)` 6, `7.1` 8, `22.2` 24, `3 channels` 3."""
    name = layout.split("(")[0].strip()
    if name in _NAMED_LAYOUTS:
        return _NAMED_LAYOUTS[name]
    if found := re.fullmatch(r"(\d+)\.(\d+)", name):
        return int(found.group(1)) + int(found.group(2))
    if found := re.fullmatch(r"(\d+) channels", name):
        return int(found.group(1))
    return None


def bit_depth(pix_fmt: str | None) -> int | None:
    """Bits per component from a pixel format name: yuv420p 8, yuv420p10le 10, p010le 10."""
    if not pix_fmt:
        return None
    if found := re.search(r"p(\d{2})(?:le|be)?$", pix_fmt):
        return int(found.group(1))
    if found := re.fullmatch(r"p0(\d\d)(?:le|be)?", pix_fmt):
        return int(found.group(1))
    if found := re.fullmatch(r"(?:gray|y)(\d+)(?:le|be)?", pix_fmt):
        return int(found.group(1))
    if re.match(r"(rgb|bgr)(48|a64)", pix_fmt):
        return 16
    return 8


def _clock(text: str) -> float | None:
    if found := re.fullmatch(r"(\d+):(\d\d):(\d\d(?:\.\d+)?)", text.strip()):
        hours, minutes, seconds = found.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


def _kbps(text: str) -> int | None:
    found = re.match(r"(\d+) kb/s", text)
    return int(found.group(1)) * 1000 if found else None


def _ratio(text: str | None) -> float | None:
    num, _, den = (text or "").partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _num(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def _int(text: str | None) -> int | None:
    value = _num(text)
    return int(value) if value is not None else None
