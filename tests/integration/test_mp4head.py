"""The MP4/MOV header guess (daemon.media.mp4head) against files real ffmpeg wrote, and the
files it must give up on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.mp4head import Mp4Head, read_mp4_head
from tests.support.media import run_ffmpeg


async def _make(tools: FfmpegTools, out: Path, *extra: str, size: str = "320x180") -> Path:
    code, err = await run_ffmpeg(
        tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration=2",
        "-f", "lavfi", "-i", "sine=duration=3", "-c:v", "libx264", "-preset", "ultrafast",
        "-c:a", "aac", *extra, str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


async def _head(path: Path) -> Mp4Head | None:
    return await asyncio.to_thread(read_mp4_head, path)


@pytest.mark.parametrize(
    ("name", "extra"),
    [("plain.mp4", ()), ("faststart.mp4", ("-movflags", "+faststart")), ("plain.mov", ())],
)
async def test_size_and_durations_of_what_ffmpeg_writes(
    ffmpeg_tools: FfmpegTools, tmp_path: Path, name: str, extra: tuple[str, ...]
) -> None:
    """Video 2 s, audio 3 s: the track's duration is the video's, the movie's the longest."""
    head = await _head(await _make(ffmpeg_tools, tmp_path / name, *extra))
    assert head is not None
    assert (head.width, head.height) == (320, 180)
    assert abs(head.track_duration_s - 2.0) < 0.05
    assert abs(head.movie_duration_s - 3.0) < 0.1


async def test_an_odd_size_is_the_coded_picture(ffmpeg_tools: FfmpegTools, tmp_path: Path) -> None:
    head = await _head(await _make(ffmpeg_tools, tmp_path / "odd.mp4", size="202x114"))
    assert head is not None and (head.width, head.height) == (202, 114)


async def test_other_containers_and_damaged_files_give_no_guess(
    ffmpeg_tools: FfmpegTools, tmp_path: Path
) -> None:
    mkv = await _make(ffmpeg_tools, tmp_path / "x.mkv")
    assert await _head(mkv) is None
    good = await _make(ffmpeg_tools, tmp_path / "good.mp4")
    data = await asyncio.to_thread(good.read_bytes)
    cut = tmp_path / "cut.mp4"  # the moov (at the end without faststart) cut short
    await asyncio.to_thread(cut.write_bytes, data[: len(data) - 200])
    assert await _head(cut) is None
    junk = tmp_path / "junk.mp4"
    await asyncio.to_thread(junk.write_bytes, b"\x00\x00\x00\x01moov" + b"\xff" * 64)
    assert await _head(junk) is None
    empty = tmp_path / "empty.mp4"
    await asyncio.to_thread(empty.write_bytes, b"")
    assert await _head(empty) is None
    assert await _head(tmp_path / "missing.mp4") is None


async def test_audio_only_mp4_gives_no_guess(ffmpeg_tools: FfmpegTools, tmp_path: Path) -> None:
    out = tmp_path / "a.m4a"
    code, err = await run_ffmpeg(ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi",
                                 "-i", "sine=duration=1", "-c:a", "aac", str(out))  # fmt: skip
    assert code == 0, err
    assert await _head(out) is None
