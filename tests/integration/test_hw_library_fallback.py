"""A hardware encoder whose driver library will not load hands the job to the next encoder, on
real ffmpeg: the static build aborts (SIGABRT) when its render node opens but libva-drm cannot
be loaded (a host with the device and no VA runtime). A file stands in for the render node."""

from __future__ import annotations

import ctypes.util
from dataclasses import replace
from pathlib import Path

import pytest

from daemon.errors import EncoderError
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.probe import probe_media
from daemon.ops import run_operation
from schemas.operations import Transcode
from tests.support.transcodejob import job_context

pytestmark = pytest.mark.skipif(
    ctypes.util.find_library("va-drm") is not None,
    reason="this host has libva-drm: its QSV open does not fail for want of it",
)


@pytest.mark.parametrize("encoder", ["h264_vaapi", "h264_qsv"])
async def test_a_va_encode_without_its_driver_library_falls_back_to_software(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, encoder: str
) -> None:
    out = tmp_path / "out" / "v.mp4"
    out.parent.mkdir()
    ctx = job_context(ffmpeg_tools, tmp_path, [clip.parent], clip, out,
                      Transcode(codec="h264", height=120, preset="ultrafast"))  # fmt: skip
    node = tmp_path / "renderD128"
    node.touch()
    ctx = replace(ctx, verified_encoders=frozenset({encoder, "libx264", "aac"}),
                  render_node=str(node))  # fmt: skip
    result = await run_operation(ctx)
    assert result.encoder == "libx264"
    [failure] = ctx.encoder_failures
    assert isinstance(failure, EncoderError) and failure.encoder == encoder
    assert "libva-drm" in failure.reason and "SIGABRT" in failure.reason
    assert any(note.startswith(f"{encoder} failed") for note in result.notes)
    streams = (await probe_media(ffmpeg_tools, out)).streams
    assert [s.codec for s in streams if s.type == "video"] == ["h264"]
