"""An HDR source packaged on real ffmpeg: refused by default, since a ladder's 8-bit rungs would
stay tagged HDR; with `hdr: tonemap` every rung is 8-bit BT.709 SDR, tone-mapped once. A
per-title ladder refuses it too."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from daemon.errors import InvalidJob
from daemon.ffmpeg.tools import FfmpegTools
from daemon.ops.context import JobContext
from daemon.ops.package import run_package
from daemon.ops.pertitle.run import run_pertitle
from schemas.operations import Package, PerTitle, PerTitleRung, Rung
from tests.support.media import make_hdr_clip
from tests.support.probing import ffmpeg_output
from tests.support.transcodejob import job_context


@pytest_asyncio.fixture(scope="module")
async def hdr10(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    return await make_hdr_clip(ffmpeg_tools.ffmpeg, media_dir / "pkg-hdr10.mp4", "smpte2084",
                               "libx265")  # fmt: skip


def _ctx(
    tools: FfmpegTools, tmp_path: Path, src: Path, out: Path, pertitle: bool = False, **op: Any
) -> JobContext:
    ladder = [Rung(height=240, bitrate_kbps=300), Rung(height=120, bitrate_kbps=150)]
    operation = (
        PerTitle(rungs=[PerTitleRung(height=240)])
        if pertitle
        else Package(ladder=ladder, segment_seconds=1.0, **op)
    )
    return job_context(tools, tmp_path, [src.parent], src, out, operation)


async def test_an_hdr_source_is_refused_rather_than_packaged_as_8_bit_hdr(
    ffmpeg_tools: FfmpegTools, hdr10: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    with pytest.raises(InvalidJob, match=r"the input is HDR10 \(PQ\).*ask `hdr` 'tonemap'"):
        await run_package(_ctx(ffmpeg_tools, tmp_path, hdr10, out))
    assert not out.exists()


@pytest.mark.parametrize("dash", [False, True])
async def test_tonemap_makes_every_rung_8_bit_bt709(
    ffmpeg_tools: FfmpegTools, hdr10: Path, tmp_path: Path, dash: bool
) -> None:
    out = tmp_path / "pkg"
    ctx = _ctx(ffmpeg_tools, tmp_path, hdr10, out, hdr="tonemap", hls=not dash, dash=dash)
    result = await run_package(ctx)
    assert result.notes == ["HDR10 (PQ) input tone-mapped to SDR (BT.709)"]
    master = out / ("manifest.mpd" if dash else "master.m3u8")
    _, banner = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(master))
    videos = re.findall(r"Video: h264 .*", banner)
    assert len(videos) == 2, banner
    # 8-bit 4:2:0 tagged BT.709 throughout: no PQ transfer or BT.2020 primaries left.
    assert all("yuv420p(tv, bt709" in v for v in videos), videos
    assert "smpte2084" not in banner and "bt2020" not in banner


async def test_a_per_title_ladder_refuses_an_hdr_source(
    ffmpeg_tools: FfmpegTools, hdr10: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pt"
    with pytest.raises(InvalidJob, match=r"HDR10 \(PQ\): a per-title ladder takes SDR sources"):
        await run_pertitle(_ctx(ffmpeg_tools, tmp_path, hdr10, out, pertitle=True))
    assert not out.exists()
