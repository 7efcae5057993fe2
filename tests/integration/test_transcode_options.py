"""Transcode options on real ffmpeg with tiny generated clips, each checked by probing the output.

Jobs go in as JSON through the job decoder, as a producer sends them, so what the wire contract
settles (the container from the extension, defaults) is what the daemon runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio

from daemon.errors import InputError, InvalidJob, PathRefused
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.paths import uri_of
from daemon.media.probe import probe_media
from tests.support.media import make_hdr_clip, run_ffmpeg
from tests.support.probing import (
    frame_count,
    header_values,
    idet_counts,
    keyframes,
    mean_rgb,
    video_line,
)
from tests.support.transcodejob import run_job


async def test_a_json_job_to_webm_writes_webm(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "x.webm"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip_small, out, codec="vp9", crf=40)
    info = await probe_media(ffmpeg_tools, out)
    assert "webm" in info.container and "mp4" not in info.container
    assert [s.codec for s in info.streams] == ["vp9", "opus"]
    # WebM is Matroska with an EBML doctype of "webm": the bytes say so, not only the name.
    assert b"webm" in (await asyncio.to_thread(out.read_bytes))[:64]


@pytest_asyncio.fixture(scope="module")
async def interlaced(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """2 s of real interlaced pictures (50p woven into 25i, top field first)."""
    out = media_dir / "interlaced.mp4"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=50:duration=2",
        "-vf", "interlace=scan=tff", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
        "-flags", "+ildct+ilme", "-pix_fmt", "yuv420p", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest_asyncio.fixture(scope="module")
async def red_png(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    out = media_dir / "mark.png"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", "color=c=red:s=32x16,format=rgba", "-frames:v", "1", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


async def test_trim_keeps_the_asked_window(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "t.mp4"
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out,
                           start_seconds=0.5, duration_seconds=1.0)  # fmt: skip
    info = await probe_media(ffmpeg_tools, out)
    assert info.duration_s is not None and abs(info.duration_s - 1.0) < 0.06
    # 1 s at 25 fps; ffmpeg's own `-ss 0.5 -t 1` on this clip keeps 24 (the seek lands on the
    # frame just after the start), so one frame either way is ffmpeg's rounding, not the trim.
    assert await frame_count(ffmpeg_tools.ffmpeg, out) in (24, 25)
    assert [s.type for s in info.streams] == ["video", "audio"]
    assert result.media_seconds == 1.0


async def test_trim_to_the_end_when_no_duration_is_given(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "t.mp4"
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, start_seconds=1.2)
    assert await frame_count(ffmpeg_tools.ffmpeg, out) in (19, 20)  # 0.8 s at 25 fps
    assert result.media_seconds is not None and abs(result.media_seconds - 0.8) < 1e-9


async def test_a_start_past_the_end_is_refused(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "t.mp4"
    with pytest.raises(InvalidJob, match=r"`start_seconds` 5 is at or past the input's end"):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, start_seconds=5)
    assert not out.exists()


async def test_crop_then_scale(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path, red_png: Path
) -> None:
    out = tmp_path / "out" / "c.mp4"
    crop = {"width": 160, "height": 120, "x": 160, "y": 120}
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, crop=crop, width=80)
    video = (await probe_media(ffmpeg_tools, out)).streams[0]
    assert (video.width, video.height) == (80, 60)
    with pytest.raises(InvalidJob, match=r"crop 160x120 at \(200, 0\) falls outside the 320x240"):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out,
                      crop={**crop, "x": 200, "y": 0})  # fmt: skip


async def test_deinterlace_removes_the_combing(
    ffmpeg_tools: FfmpegTools, interlaced: Path, tmp_path: Path, media_dir: Path
) -> None:
    ffmpeg = ffmpeg_tools.ffmpeg
    plain, woven = tmp_path / "out" / "plain.mp4", tmp_path / "out" / "d.mp4"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], interlaced, plain, crf=18)
    await run_job(ffmpeg_tools, tmp_path, [media_dir], interlaced, woven, crf=18, deinterlace=True)
    combed, _ = await idet_counts(ffmpeg, plain)
    assert combed >= 40  # without the option the fields stay woven
    combed, progressive = await idet_counts(ffmpeg, woven)
    assert progressive >= 40 and combed <= 10
    assert "progressive" in await video_line(ffmpeg, woven)


async def test_fixed_gop_and_closed_gop(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    ffmpeg = ffmpeg_tools.ffmpeg
    h264, open_hevc, closed_hevc = (tmp_path / "out" / n for n in ("g.mp4", "o.mp4", "c.mp4"))
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, h264, gop_size=12)
    assert await keyframes(ffmpeg, h264) == [0, 12, 24, 36, 48]
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, open_hevc, codec="hevc", gop_size=10)
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, closed_hevc, codec="hevc",
                  gop_size=10, closed_gop=True)  # fmt: skip
    assert await keyframes(ffmpeg, closed_hevc) == [0, 10, 20, 30, 40]
    # HEVC keyframes after the first: CRA (21) in an open GOP, IDR (19, 20) in a closed one.
    assert 21 in await header_values(ffmpeg, open_hevc, "nal_unit_type")
    closed = set(await header_values(ffmpeg, closed_hevc, "nal_unit_type"))
    assert 21 not in closed and closed & {19, 20}


async def test_profile_level_and_pixel_format(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    ffmpeg = ffmpeg_tools.ffmpeg
    main, hevc10, full = (tmp_path / "out" / n for n in ("m.mp4", "h.mp4", "f.mkv"))
    # x264 takes the profile as a ceiling: `ultrafast` fits Constrained Baseline, `fast` does not.
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, main, profile="main", level="3.1",
                  preset="fast")  # fmt: skip
    assert "h264 (Main)" in await video_line(ffmpeg, main)
    assert set(await header_values(ffmpeg, main, "level_idc")) == {31}
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, hevc10, codec="hevc",
                  profile="main10", level="4.1")  # fmt: skip
    line = await video_line(ffmpeg, hevc10)
    assert "hevc (Main 10)" in line and "yuv420p10le" in line
    assert set(await header_values(ffmpeg, hevc10, "general_level_idc")) == {123}  # 4.1 x 30
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, full, pix_fmt="yuv444p")
    video = (await probe_media(ffmpeg_tools, full)).streams[0]
    assert (video.codec, video.pix_fmt) == ("h264", "yuv444p")
    assert "High 4:4:4" in await video_line(ffmpeg, full)


async def test_frame_rate_change(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "r.mp4"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, fps=10)
    video = (await probe_media(ffmpeg_tools, out)).streams[0]
    assert video.fps == 10.0
    assert await frame_count(ffmpeg_tools.ffmpeg, out) == 20


async def test_overlay_draws_the_image_where_asked(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path, red_png: Path
) -> None:
    ffmpeg = ffmpeg_tools.ffmpeg
    out = tmp_path / "out" / "w.mp4"
    overlay = {"image": uri_of(red_png), "position": "bottom-right", "margin": 8, "width": 64}
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, crf=18, overlay=overlay)
    # 64x32 of red ends 8 px from the right and bottom edges of 320x240: (248, 200)-(312, 232).
    r, g, b = await mean_rgb(ffmpeg, out, "48:16:256:208")
    assert r > 200 and g < 60 and b < 60
    r, g, b = await mean_rgb(ffmpeg, out, "48:16:256:208", at=1.9)  # on the last frames too
    assert r > 200 and g < 60 and b < 60
    r, g, b = await mean_rgb(ffmpeg, out, "48:16:8:8")  # the opposite corner is untouched
    assert not (r > 200 and g < 60 and b < 60)


async def test_an_overlay_outside_the_roots_is_refused(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path, red_png: Path
) -> None:
    out = tmp_path / "out" / "w.mp4"
    with pytest.raises(PathRefused):
        await run_job(ffmpeg_tools, tmp_path / "jail", [], clip, out,
                      overlay={"image": "file:///etc/hostname"})  # fmt: skip
    assert not out.exists()


async def test_an_overlay_that_is_not_an_image_is_refused(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "w.mp4"
    with pytest.raises(InputError):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out,
                      overlay={"image": uri_of(clip)})  # fmt: skip


@pytest_asyncio.fixture(scope="module")
async def hdr10(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    return await make_hdr_clip(ffmpeg_tools.ffmpeg, media_dir / "hdr10.mp4", "smpte2084", "libx265")


@pytest_asyncio.fixture(scope="module")
async def hlg(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    return await make_hdr_clip(
        ffmpeg_tools.ffmpeg, media_dir / "hlg.mkv", "arib-std-b67", "libsvtav1"
    )


async def test_the_hdr_test_media_are_what_they_claim(
    ffmpeg_tools: FfmpegTools, hdr10: Path, hlg: Path
) -> None:
    for clip, kind, transfer in ((hdr10, "hdr10", "smpte2084"), (hlg, "hlg", "arib-std-b67")):
        video = (await probe_media(ffmpeg_tools, clip)).streams[0]
        assert (video.pix_fmt, video.hdr) == ("yuv420p10le", kind)
        assert f"bt2020nc/bt2020/{transfer}" in await video_line(ffmpeg_tools.ffmpeg, clip)


async def test_hdr_to_an_8_bit_output_is_refused_with_the_ways_out(
    ffmpeg_tools: FfmpegTools, hdr10: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "x.mp4"
    with pytest.raises(InvalidJob) as info:
        await run_job(ffmpeg_tools, tmp_path, [media_dir], hdr10, out)  # h264 by default
    reason = str(info.value)
    assert "the input is HDR10 (PQ) but the output would be 8-bit h264" in reason
    assert "`hdr` 'tonemap'" in reason and "10-bit hevc/av1/vp9" in reason
    with pytest.raises(InvalidJob, match="would be 8-bit hevc"):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], hdr10, out, codec="hevc",
                      pix_fmt="yuv420p")  # fmt: skip
    assert not out.exists()


async def test_hdr10_stays_hdr10_in_10_bit_hevc(
    ffmpeg_tools: FfmpegTools, hdr10: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "x.mp4"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], hdr10, out, codec="hevc", height=120)
    video = (await probe_media(ffmpeg_tools, out)).streams[0]
    assert (video.codec, video.pix_fmt, video.bit_depth, video.hdr) == (
        "hevc", "yuv420p10le", 10, "hdr10",
    )  # fmt: skip
    line = await video_line(ffmpeg_tools.ffmpeg, out)
    assert "Main 10" in line and "bt2020nc/bt2020/smpte2084" in line
    # The bitstream itself signals it (VUI), not only the container.
    assert await header_values(ffmpeg_tools.ffmpeg, out, "transfer_characteristics") == [16]
    assert await header_values(ffmpeg_tools.ffmpeg, out, "colour_primaries") == [9]


async def test_hlg_kept_in_10_bit_av1(
    ffmpeg_tools: FfmpegTools, hlg: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "x.mkv"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], hlg, out, codec="av1", hdr="keep",
                  preset="ultrafast", crf=50, audio_codec="opus")  # fmt: skip
    video = (await probe_media(ffmpeg_tools, out)).streams[0]
    assert (video.codec, video.pix_fmt, video.hdr) == ("av1", "yuv420p10le", "hlg")
    assert "bt2020nc/bt2020/arib-std-b67" in await video_line(ffmpeg_tools.ffmpeg, out)


async def test_tonemap_makes_8_bit_bt709_sdr(
    ffmpeg_tools: FfmpegTools, hdr10: Path, hlg: Path, tmp_path: Path, media_dir: Path
) -> None:
    for clip in (hdr10, hlg):
        out = tmp_path / "out" / f"sdr-{clip.stem}.mp4"
        result = await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, hdr="tonemap")
        video = (await probe_media(ffmpeg_tools, out)).streams[0]
        assert (video.codec, video.pix_fmt, video.hdr) == ("h264", "yuv420p", None)
        assert "yuv420p(tv, bt709, progressive)" in await video_line(ffmpeg_tools.ffmpeg, out)
        assert any("tone-mapped to SDR (BT.709)" in n for n in result.notes)
        # Not a blank picture: testsrc2's colour bars survive the mapping.
        r, g, b = await mean_rgb(ffmpeg_tools.ffmpeg, out, "320:240:0:0")
        assert 20 < (r + g + b) / 3 < 235
