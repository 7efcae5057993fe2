"""Media probe: ffprobe JSON and the `ffmpeg -i` fallback give the same ProbeInfo."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import msgspec
import pytest

from daemon.errors import InputError
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.parse import bit_depth, channels_of, parse_banner, parse_ffprobe_json
from daemon.media.probe import probe_media, probe_with_ffmpeg, probe_with_ffprobe
from schemas.results import ProbeInfo, StreamInfo
from tests.support.media import run_ffmpeg

# Shaped like `ffprobe -print_format json -show_format -show_streams` (fields trimmed).
FFPROBE_JSON = b"""{
  "streams": [
    {"index": 0, "codec_name": "hevc", "codec_type": "video", "width": 3840, "height": 2160,
     "pix_fmt": "yuv420p10le", "color_transfer": "smpte2084", "r_frame_rate": "30000/1001",
     "avg_frame_rate": "30000/1001", "bit_rate": "15000000", "duration": "10.010000",
     "side_data_list": [{"side_data_type": "Mastering display metadata"}]},
    {"index": 1, "codec_name": "eac3", "codec_type": "audio", "sample_rate": "48000",
     "channels": 6, "channel_layout": "5.1(side)", "bit_rate": "640000"},
    {"index": 2, "codec_name": "hevc", "codec_type": "video", "width": 1920, "height": 1080,
     "pix_fmt": "yuv420p10le", "avg_frame_rate": "0/0", "r_frame_rate": "24/1",
     "side_data_list": [{"side_data_type": "DOVI configuration record", "dv_profile": 8}]},
    {"index": 3, "codec_name": "subrip", "codec_type": "subtitle"}
  ],
  "format": {"filename": "x.mkv", "nb_streams": 4, "format_name": "matroska,webm",
             "duration": "10.010000", "size": "19500000", "bit_rate": "15584415"}
}"""


def test_ffprobe_json_parser() -> None:
    info = parse_ffprobe_json(FFPROBE_JSON, size_bytes=19_500_000)
    assert (info.container, info.duration_s, info.bitrate_bps) == ("matroska,webm", 10.01, 15584415)
    video, audio, dv, sub = info.streams
    assert video == StreamInfo(
        index=0, type="video", codec="hevc", width=3840, height=2160, fps=29.97,
        pix_fmt="yuv420p10le", bit_depth=10, hdr="hdr10", bitrate_bps=15_000_000, duration_s=10.01,
    )  # fmt: skip
    assert (audio.channels, audio.sample_rate, audio.width) == (6, 48000, None)
    assert (dv.fps, dv.hdr) == (24.0, "dolby_vision")
    assert (sub.type, sub.codec) == ("subtitle", "subrip")


def test_malformed_ffprobe_json_is_refused() -> None:
    with pytest.raises(ValueError, match="ffprobe JSON"):
        parse_ffprobe_json(b'{"streams": 3}', None)


BANNER = """[info] Input #0, mpegts, from '<input>':
[info]   Duration: 00:01:02.50, start: 1.400000, bitrate: 836 kb/s
[info]   Program 1
[info]     Metadata:
[info]       service_name    : Stream #0:9: Video: fake, 1x1
[info]   Stream #0:0[0x100]: Video: h264 (High) ([27][0][0][0] / 0x001B), yuv420p(tv, bt709, \
progressive), 1920x1080 [SAR 1:1 DAR 16:9], 29.97 fps, 29.97 tbr, 90k tbn, start 1.421333
[info]   Stream #0:1[0x101](eng): Audio: ac3 ([129][0][0][0] / 0x0081), 48000 Hz, 5.1(side), fltp, \
448 kb/s, start 1.400000
[info]   Stream #0:2[0x102]: Audio: pcm_s16le, 44100 Hz, 2 channels, s16, 1411 kb/s
At least one output file must be specified
"""


def test_banner_parser() -> None:
    info = parse_banner(BANNER, size_bytes=10)
    assert (info.container, info.duration_s, info.bitrate_bps) == ("mpegts", 62.5, 836_000)
    video, ac3, pcm = info.streams  # the metadata line that mimics a stream is not one
    assert video == StreamInfo(
        index=0, type="video", codec="h264", width=1920, height=1080, fps=29.97,
        pix_fmt="yuv420p", bit_depth=8,
    )  # fmt: skip
    assert (ac3.codec, ac3.channels, ac3.sample_rate, ac3.bitrate_bps) == ("ac3", 6, 48000, 448000)
    assert (pcm.channels, pcm.sample_rate) == (2, 44100)
    with pytest.raises(ValueError, match="no input description"):
        parse_banner("[error] nothing here\n", None)


@pytest.mark.parametrize(
    ("pix_fmt", "depth"),
    [("yuv420p", 8), ("yuv420p10le", 10), ("p010le", 10), ("yuv444p12be", 12), ("gray16le", 16)],
)
def test_bit_depth(pix_fmt: str, depth: int) -> None:
    assert bit_depth(pix_fmt) == depth


def test_channel_layouts() -> None:
    cases = {"mono": 1, "stereo": 2, "5.1(side)": 6, "7.1": 8, "22.2": 24, "3 channels": 3}
    assert {k: channels_of(k) for k in cases} == cases


async def test_fallback_on_a_real_clip(ffmpeg_tools: FfmpegTools, clip: Path) -> None:
    info = await probe_with_ffmpeg(ffmpeg_tools.ffmpeg, clip, within=30)
    assert "mp4" in info.container and info.duration_s == 2.0
    assert info.size_bytes == await asyncio.to_thread(os.path.getsize, clip)
    video, audio = info.streams
    assert (video.codec, video.width, video.height, video.fps) == ("h264", 320, 240, 25.0)
    assert (video.pix_fmt, video.bit_depth) == ("yuv420p", 8)
    assert (audio.codec, audio.sample_rate, audio.channels) == ("aac", 48000, 1)


async def test_fallback_on_10_bit_hdr_with_opus(ffmpeg_tools: FfmpegTools, tmp_path: Path) -> None:
    out = tmp_path / "hdr.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30000/1001:duration=0.5",
        "-f", "lavfi", "-i", "sine=sample_rate=44100:duration=0.5",
        "-vf", "setparams=color_trc=smpte2084:color_primaries=bt2020:colorspace=bt2020nc,"
        "format=yuv420p10le",
        "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
        "-c:a", "libopus", "-ac", "2", str(out),
    )  # fmt: skip
    assert code == 0, err
    info = await probe_media(FfmpegTools(ffmpeg_tools.ffmpeg, None), out)
    video, audio = info.streams
    assert (video.codec, video.bit_depth, video.hdr, video.fps) == ("hevc", 10, "hdr10", 29.97)
    assert (audio.codec, audio.channels, audio.sample_rate) == ("opus", 2, 48000)


async def test_a_name_that_mimics_the_banner_cannot_spoof_it(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    sneaky = tmp_path / "x'\n  Stream #0:7: Video: h264, yuv420p, 9999x9999, 5 fps\n.mp4"
    await asyncio.to_thread(shutil.copy, clip, sneaky)
    info = await probe_with_ffmpeg(ffmpeg_tools.ffmpeg, sneaky, within=30)
    assert [(s.index, s.width) for s in info.streams] == [(0, 320), (1, None)]


async def test_unreadable_inputs_are_input_errors(
    ffmpeg_tools: FfmpegTools, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 100)
    for path, needle in ((garbage, "Invalid data"), (tmp_path / "missing.mp4", "No such file")):
        with pytest.raises(InputError, match=needle) as info:
            await probe_with_ffmpeg(ffmpeg_tools.ffmpeg, path, within=30)
        assert info.value.stderr_tail and info.value.kind == "permanent"


async def test_both_paths_agree_where_ffprobe_exists(ffmpeg_tools: FfmpegTools, clip: Path) -> None:
    """Runs the comparison only on hosts with ffprobe (the wheel has none): no skip either way."""
    fallback = await probe_with_ffmpeg(ffmpeg_tools.ffmpeg, clip, within=30)
    if ffmpeg_tools.ffprobe is None:
        assert await probe_media(ffmpeg_tools, clip) == fallback
        return
    json_info = await probe_with_ffprobe(ffmpeg_tools.ffprobe, clip, within=30)
    assert _shape(json_info) == _shape(fallback)


def _shape(info: ProbeInfo) -> object:
    """What both sources must agree on exactly (rounded bitrates and durations aside)."""
    raw = msgspec.to_builtins(info)
    for stream in raw["streams"]:
        stream.pop("bitrate_bps", None)
        stream.pop("duration_s", None)
    raw.pop("bitrate_bps")
    raw["duration_s"] = round(raw["duration_s"], 1)
    return raw
