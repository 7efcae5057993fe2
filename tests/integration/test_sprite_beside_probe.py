"""A sprite sheet of an MP4 starts rendering on its header's size and duration while the input
is probed (daemon.ops.thumbnail), on real ffmpeg: the probe still decides. A guess it disagrees
with is rendered again on the probe's facts; a refusal stops the render and leaves nothing."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

import daemon.ops.thumbnail as thumbnail
from daemon.config import MediaSettings
from daemon.errors import InputError
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.access import MediaAccess
from daemon.media.mp4head import Mp4Head
from daemon.media.probe import probe_media
from daemon.ops.context import JobContext
from schemas.operations import Thumbnail
from tests.support.beside import probe_waits_for_the_run
from tests.support.transcodejob import job_context

SHEET = Thumbnail(sprite=True, tiles=8, columns=4, width=80)


class Commands:
    def __init__(self) -> None:
        self.argvs: list[list[str]] = []
        self.first = asyncio.Event()

    async def __call__(self, encoder: str | None, argv: list[str]) -> None:
        self.argvs.append(argv)
        self.first.set()


def _ctx(
    tools: FfmpegTools, tmp_path: Path, src: Path, limits: MediaSettings | None = None
) -> tuple[JobContext, Commands, Path]:
    out = tmp_path / "out" / "sheet.jpg"
    out.parent.mkdir()
    commands = Commands()
    ctx = replace(job_context(tools, tmp_path, [src.parent], src, out, SHEET), on_command=commands)
    if limits is not None:
        ctx = replace(ctx, media=MediaAccess(limits=limits))
    return ctx, commands, out


def _filter(argv: list[str]) -> str:
    return argv[argv.index("-vf") + 1]


def _left_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


async def test_the_sheet_renders_before_the_probe_ends(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, commands, out = _ctx(ffmpeg_tools, tmp_path, clip)
    seen = probe_waits_for_the_run(monkeypatch, thumbnail, commands)
    result = await asyncio.wait_for(thumbnail.run_thumbnail(ctx), 120)
    assert seen == [True], "the probe ended before the render started"
    assert len(commands.argvs) == 1  # the header's guess agreed: kept
    info = await probe_media(ffmpeg_tools, out)
    assert (info.streams[0].width, info.streams[0].height) == (320, 120)  # 4x2 tiles of 80x60
    vtt = await asyncio.to_thread((out.parent / "sheet.jpg.vtt").read_text)
    assert "00:00:00.000 --> 00:00:00.250" in vtt and "--> 00:00:02.000" in vtt
    assert result.media_seconds is not None and abs(result.media_seconds - 2.0) < 0.05


async def test_a_guess_the_probe_disagrees_with_is_rendered_again(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A header that claims another picture size (tiles of another height) and length."""
    ctx, commands, out = _ctx(ffmpeg_tools, tmp_path, clip)
    wrong = Mp4Head(width=320, height=320, track_duration_s=9.0, movie_duration_s=9.0)
    monkeypatch.setattr(thumbnail, "read_mp4_head", lambda path: wrong)
    await asyncio.wait_for(thumbnail.run_thumbnail(ctx), 120)
    first, second = (_filter(argv) for argv in commands.argvs)
    assert first == "fps=8/9.0,scale=80:80,tile=4x2"
    assert second.startswith("fps=8/2.") and second.endswith(",scale=80:60,tile=4x2")
    info = await probe_media(ffmpeg_tools, out)
    assert (info.streams[0].width, info.streams[0].height) == (320, 120)
    assert _left_in(out.parent) == ["sheet.jpg", "sheet.jpg.vtt"]


async def test_a_refused_input_stops_the_render_and_leaves_nothing(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    ctx, commands, out = _ctx(ffmpeg_tools, tmp_path, clip, MediaSettings(max_duration_s=1.0))
    with pytest.raises(InputError, match="over the limit"):
        await asyncio.wait_for(thumbnail.run_thumbnail(ctx), 120)
    assert commands.argvs, "the render did not start beside the probe"
    assert _left_in(out.parent) == []
