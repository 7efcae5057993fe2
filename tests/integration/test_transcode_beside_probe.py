"""A transcode starts its encode while the input is probed (daemon.ops.transcode): audio only,
and video on the common input's plan. The probe still decides, on real ffmpeg. A refusal
stops the encode and leaves no output; a settled command unlike the guessed one is encoded
again."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import daemon.ops.transcode as transcode
from daemon.config import MediaSettings
from daemon.errors import InputError, InvalidJob
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.access import MediaAccess
from daemon.media.probe import probe_media
from daemon.ops import run_operation
from daemon.ops.transcode_plan import Plan
from schemas.operations import Transcode
from schemas.results import JobResult
from schemas.videoopts import Crop
from tests.support.beside import probe_waits_for_the_run
from tests.support.media import run_ffmpeg
from tests.support.transcodejob import job_context


@pytest_asyncio.fixture(scope="module")
async def tone(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    out = media_dir / "beside_tone.m4a"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
        "-c:a", "aac", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest_asyncio.fixture(scope="module")
async def silent_video(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    out = media_dir / "beside_silent.mp4"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1",
        "-c:v", "libx264", "-preset", "ultrafast", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


class Commands:
    """The context's `on_command`: every ffmpeg command announced, and an event at the first."""

    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.first = asyncio.Event()

    async def __call__(self, encoder: str | None, argv: list[str]) -> None:
        self.argvs.append(argv)
        self.first.set()


def _ctx(
    tools: FfmpegTools, tmp_path: Path, src: Path, out: Path, limits: MediaSettings | None = None
) -> tuple[Any, Commands]:
    commands = Commands()
    ctx = job_context(tools, tmp_path, [src.parent], src, out, Transcode(audio_bitrate_kbps=64))
    ctx = replace(ctx, on_command=commands)
    if limits is not None:
        ctx = replace(ctx, media=MediaAccess(limits=limits))
    return ctx, commands


async def _run(ctx: Any) -> JobResult:
    return await asyncio.wait_for(run_operation(ctx), 120)


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_the_encode_starts_before_the_probe_ends(
    ffmpeg_tools: FfmpegTools, tone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "a.m4a"
    out.parent.mkdir()
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, tone, out)
    seen = probe_waits_for_the_run(monkeypatch, transcode, commands)
    result = await _run(ctx)
    assert seen == [True], "the probe ended before any encode started"
    assert len(commands.argvs) == 1  # the blind command was the settled one: kept, not rerun
    [audio] = (await probe_media(ffmpeg_tools, out)).streams
    assert (audio.type, audio.codec) == ("audio", "aac")
    assert result.media_seconds is not None and abs(result.media_seconds - 2.0) < 0.1
    assert result.input_size_bytes == (await asyncio.to_thread(tone.stat)).st_size


async def test_an_input_without_audio_stops_the_encode_and_leaves_nothing(
    ffmpeg_tools: FfmpegTools, silent_video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "a.m4a"
    out.parent.mkdir()
    ctx, _ = _ctx(ffmpeg_tools, tmp_path, silent_video, out)
    with pytest.raises(InputError, match=r"input has no audio stream #0 \(0 found\)"):
        await _run(ctx)
    assert _left_in(out.parent) == []


async def test_an_input_over_the_limits_is_refused_though_its_encode_started(
    ffmpeg_tools: FfmpegTools, tone: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "a.m4a"
    out.parent.mkdir()
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, tone, out, MediaSettings(max_duration_s=1.0))
    with pytest.raises(InputError, match="over the limit"):
        await _run(ctx)
    assert commands.argvs, "the encode did not start beside the probe"
    assert _left_in(out.parent) == []


async def test_a_settled_command_unlike_the_blind_one_is_encoded_again(
    ffmpeg_tools: FfmpegTools, tone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A blind plan that guessed wrong (here: a filter the settled plan has not) costs a rerun,
    never an output the settled plan would not make."""
    out = tmp_path / "out" / "a.m4a"
    out.parent.mkdir()
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, tone, out)

    def wrong_guess(op: Transcode) -> Plan | None:
        return Plan(None, None, False, audio_filters=("volume=0.1",))

    monkeypatch.setattr(transcode, "blind_plan", wrong_guess)
    await _run(ctx)
    assert len(commands.argvs) == 2
    assert _has(commands.argvs[0], "volume=0.1") and not _has(commands.argvs[1], "volume=0.1")
    [audio] = (await probe_media(ffmpeg_tools, out)).streams
    assert audio.codec == "aac"
    assert _left_in(out.parent) == ["a.m4a"]


def _has(argv: Sequence[str], arg: str) -> bool:
    return arg in argv


# -- video: started on the common input's plan (8-bit SDR, no subtitle track) ---------------

VIDEO = Transcode(height=120, preset="ultrafast")


@pytest_asyncio.fixture(scope="module")
async def ten_bit(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    out = media_dir / "beside_10bit.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1",
        "-c:v", "ffv1", "-pix_fmt", "yuv420p10le", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


def _video_ctx(tools: FfmpegTools, tmp_path: Path, src: Path, out: Path, op: Transcode) -> Any:
    commands = Commands()
    ctx = job_context(tools, tmp_path, [src.parent], src, out, op)
    return replace(ctx, on_command=commands), commands


async def test_a_video_encode_starts_before_the_probe_ends_and_is_kept(
    ffmpeg_tools: FfmpegTools, silent_video: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    ctx, commands = _video_ctx(ffmpeg_tools, tmp_path, silent_video, out, VIDEO)
    seen = probe_waits_for_the_run(monkeypatch, transcode, commands)
    result = await _run(ctx)
    assert seen == [True], "the probe ended before any encode started"
    assert len(commands.argvs) == 1  # an 8-bit SDR input without subtitles: the guess held
    [video] = (await probe_media(ffmpeg_tools, out)).streams
    assert (video.codec, video.height, video.bit_depth) == ("h264", 120, 8)
    assert result.media_seconds is not None and abs(result.media_seconds - 1.0) < 0.1
    assert result.encoder == "libx264"


async def test_a_ten_bit_input_is_encoded_again_on_its_settled_plan(
    ffmpeg_tools: FfmpegTools, ten_bit: Path, tmp_path: Path
) -> None:
    """HEVC keeps a 10-bit input's depth: the guessed 8-bit command is stopped and the settled
    one makes the output."""
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    op = Transcode(codec="hevc", height=120, preset="ultrafast")
    ctx, commands = _video_ctx(ffmpeg_tools, tmp_path, ten_bit, out, op)
    ctx = replace(ctx, verified_encoders=frozenset({"libx265", "aac"}))
    result = await _run(ctx)
    assert len(commands.argvs) == 2
    guessed, settled = (" ".join(argv) for argv in commands.argvs)
    assert "yuv420p10le" in settled and "yuv420p10le" not in guessed
    [video] = (await probe_media(ffmpeg_tools, out)).streams
    assert (video.codec, video.bit_depth) == ("hevc", 10)
    assert result.encoder == "libx265" and _left_in(out.parent) == ["v.mp4"]


async def test_an_input_with_a_subtitle_track_is_encoded_again_keeping_it(
    ffmpeg_tools: FfmpegTools, media_dir: Path, tmp_path: Path
) -> None:
    srt = media_dir / "beside_cues.srt"
    srt.write_text("1\n00:00:00,100 --> 00:00:00,800\nHello\n\n")
    src = media_dir / "beside_subbed.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1", "-i", str(srt),
        "-c:v", "libx264", "-preset", "ultrafast", "-c:s", "srt", str(src),
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    ctx, commands = _video_ctx(ffmpeg_tools, tmp_path, src, out, VIDEO)
    await _run(ctx)
    assert len(commands.argvs) == 2  # the guess had no subtitle track
    streams = (await probe_media(ffmpeg_tools, out)).streams
    assert [(s.type, s.codec) for s in streams] == [("video", "h264"), ("subtitle", "mov_text")]


async def test_a_crop_outside_the_picture_stops_the_started_encode(
    ffmpeg_tools: FfmpegTools, silent_video: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    op = Transcode(preset="ultrafast", crop=Crop(width=200, height=100))
    ctx, commands = _video_ctx(ffmpeg_tools, tmp_path, silent_video, out, op)
    with pytest.raises(InvalidJob, match="falls outside the 160x120 picture"):
        await _run(ctx)
    assert commands.argvs, "the encode did not start beside the probe"
    assert _left_in(out.parent) == []
