"""probe, thumbnail, analyze and package on real ffmpeg and tiny clips, called with a JobContext."""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any

import pytest

import daemon.ops.analyze as analyze
import daemon.ops.probe_op as probe_op
from daemon.config import MediaSettings
from daemon.errors import InputError, InvalidJob, JobError
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess
from daemon.media.probe import probe_media
from daemon.ops.analyze import run_analyze
from daemon.ops.context import JobContext
from daemon.ops.package import run_package
from daemon.ops.probe_op import run_probe
from daemon.ops.thumbnail import run_thumbnail
from daemon.ops.vmafpool import percentile, vmaf_scores
from schemas.jobs import JobSpec
from schemas.operations import Analyze, Operation, Package, Probe, Rung, Thumbnail
from tests.support.media import run_ffmpeg


async def _no_progress(update: ProgressUpdate) -> None:
    return None


def _ctx(tools: FfmpegTools, scratch: Path, roots: list[Path], spec: JobSpec) -> JobContext:
    scratch.mkdir(exist_ok=True)
    return JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=frozenset(), hwaccels=frozenset(), threads=2, allowed_roots=roots,
        progress=_no_progress,
    )  # fmt: skip


def _spec(src: Path, op: Operation, out: Path | None = None) -> JobSpec:
    output = out.as_uri() if out is not None else None
    return JobSpec(job_id="j1", input=src.as_uri(), output=output, operation=op)


async def _transcode(tools: FfmpegTools, src: Path, out: Path, *args: str) -> Path:
    code, err = await run_ffmpeg(
        tools.ffmpeg, "-loglevel", "error", "-y", "-i", str(src), *args, "-c:a", "copy", str(out)
    )
    assert code == 0, err.decode(errors="replace")
    return out


async def test_probe_reports_codec_size_duration(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip.parent], _spec(clip, Probe(deep=True)))
    result = await run_probe(ctx)
    info = result.probe
    assert info is not None and info.duration_s is not None
    assert abs(info.duration_s - 2.0) < 0.1
    video = next(s for s in info.streams if s.type == "video")
    assert (video.codec, video.width, video.height) == ("h264", 320, 240)
    assert any(s.type == "audio" and s.codec == "aac" for s in info.streams)
    assert info.decode_errors == 0


async def test_deep_probe_counts_decode_errors(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    # Garbage over the middle of the file: the index is intact, the frames are not.
    data = bytearray(await asyncio.to_thread(clip.read_bytes))
    for at in range(len(data) // 3, len(data) - 200, 2000):
        data[at : at + 100] = b"\xff" * 100
    bad = tmp_path / "bad clip -y.mp4"
    await asyncio.to_thread(bad.write_bytes, bytes(data))
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [tmp_path], _spec(bad, Probe(deep=True)))
    info = (await run_probe(ctx)).probe
    assert info is not None and info.decode_errors is not None
    assert info.decode_errors > 0
    assert 0 < len(info.decode_error_lines) <= info.decode_errors


async def test_thumbnail_single_frame(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "thumb.png"
    op = Thumbnail(at_seconds=1.0, width=160, format="png")
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip.parent, tmp_path], _spec(clip, op, out))
    result = await run_thumbnail(ctx)
    assert [f.uri for f in result.outputs] == [out.as_uri()]
    info = await probe_media(ffmpeg_tools, out)
    assert (info.streams[0].width, info.streams[0].height) == (160, 120)
    left = await asyncio.to_thread(lambda: [p.name for p in out.parent.iterdir()])
    assert left == ["thumb.png"]


async def test_thumbnail_past_the_end_is_refused(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    op = Thumbnail(at_seconds=30.0)
    ctx = _ctx(
        ffmpeg_tools, tmp_path / "s", [clip.parent, tmp_path], _spec(clip, op, tmp_path / "t.jpg")
    )
    with pytest.raises(InvalidJob, match="past the end"):
        await run_thumbnail(ctx)


async def test_thumbnail_sprite_and_vtt(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sprite.jpg"
    op = Thumbnail(sprite=True, tiles=8, columns=4, width=80)
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip.parent, tmp_path], _spec(clip, op, out))
    result = await run_thumbnail(ctx)
    assert sorted(f.role for f in result.outputs) == ["index", "main"]
    info = await probe_media(ffmpeg_tools, out)
    assert (info.streams[0].width, info.streams[0].height) == (320, 120)  # 4x2 tiles of 80x60
    vtt = await asyncio.to_thread((tmp_path / "sprite.jpg.vtt").read_text)
    assert vtt.startswith("WEBVTT")
    cues = [line for line in vtt.splitlines() if "#xywh=" in line]
    assert len(cues) == 8
    assert cues[0] == "sprite.jpg#xywh=0,0,80,60" and cues[7] == "sprite.jpg#xywh=240,60,80,60"
    assert "00:00:00.000 --> 00:00:00.250" in vtt and "--> 00:00:02.000" in vtt


async def test_analyze_self_and_compressed(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    roots = [clip.parent, tmp_path]
    log = tmp_path / "self.json"
    op = Analyze(reference=clip.as_uri(), frame_log=True)
    same = await run_analyze(_ctx(ffmpeg_tools, tmp_path / "s1", roots, _spec(clip, op, log)))
    assert same.vmaf is not None and same.psnr is not None and same.ssim is not None
    assert same.vmaf.mean >= 99 and same.vmaf.model == "vmaf_v0.6.1"
    assert same.psnr.average == 100.0 and any("infinite" in n for n in same.notes)
    assert same.ssim.average > 0.999
    assert [f.role for f in same.outputs] == ["frame_log"] and (
        await asyncio.to_thread(log.stat)
    ).st_size > 0

    bad = await _transcode(
        ffmpeg_tools, clip, tmp_path / "bad.mp4",
        "-c:v", "libx264", "-crf", "45", "-maxrate", "20k", "-bufsize", "40k",
    )  # fmt: skip
    op = Analyze(reference=clip.as_uri())
    worse = await run_analyze(_ctx(ffmpeg_tools, tmp_path / "s2", roots, _spec(bad, op, log)))
    assert worse.vmaf is not None and worse.psnr is not None and worse.ssim is not None
    assert worse.vmaf.mean < same.vmaf.mean - 10
    assert worse.vmaf.min <= worse.vmaf.p1 <= worse.vmaf.p5 <= worse.vmaf.p50
    assert worse.vmaf.harmonic_mean <= worse.vmaf.mean
    assert worse.psnr.average < 40 and worse.ssim.average < same.ssim.average - 0.02
    assert worse.outputs == []


async def test_analyze_scales_smaller_distorted_to_reference(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    small = await _transcode(
        ffmpeg_tools, clip, tmp_path / "small.mp4", "-vf", "scale=160:120", "-c:v", "libx264"
    )
    op = Analyze(reference=clip.as_uri(), ssim=False, subsample=2)
    # The VMAF log lives in scratch: characters the filtergraph parser treats specially must pass.
    scratch = tmp_path / "s:1,'[x];y\\"
    ctx = _ctx(ffmpeg_tools, scratch, [clip.parent, tmp_path], _spec(small, op, tmp_path / "o"))
    result = await run_analyze(ctx)
    assert result.vmaf is not None and result.psnr is not None and result.ssim is None
    assert 0 < result.vmaf.mean < 99 and math.isfinite(result.psnr.average)


async def test_analyze_rejects_mismatched_durations(
    ffmpeg_tools: FfmpegTools, clip: Path, clip_small: Path, tmp_path: Path
) -> None:
    op = Analyze(reference=clip.as_uri())
    roots = [clip.parent, tmp_path]
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", roots, _spec(clip_small, op, tmp_path / "o"))
    with pytest.raises(InvalidJob, match="trim them"):
        await run_analyze(ctx)


async def test_analyze_rejects_other_frame_rate(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    fast = await _transcode(ffmpeg_tools, clip, tmp_path / "30.mp4", "-r", "30", "-c:v", "libx264")
    op = Analyze(reference=clip.as_uri())
    ctx = _ctx(
        ffmpeg_tools, tmp_path / "s", [clip.parent, tmp_path], _spec(fast, op, tmp_path / "o")
    )
    with pytest.raises(InvalidJob, match="fps"):
        await run_analyze(ctx)


def test_vmaf_pooling() -> None:
    scores = vmaf_scores([50.0, 100.0, 75.0, 25.0], "vmaf_v0.6.1")
    assert (scores.mean, scores.min, scores.p50) == (62.5, 25.0, 62.5)
    assert scores.harmonic_mean < scores.mean
    assert percentile([1.0, 2.0], 100) == 2.0 and percentile([3.0], 5) == 3.0


async def _plays(tools: FfmpegTools, playlist: Path) -> float:
    """Decode every segment a playlist/manifest names; returns the decoded duration."""
    code, err = await run_ffmpeg(
        tools.ffmpeg, "-loglevel", "level+info", "-protocol_whitelist", "file",
        "-i", str(playlist), "-map", "0:v:0", "-f", "null", "-",
    )  # fmt: skip
    text = err.decode(errors="replace")
    assert code == 0 and "[error]" not in text, text[-2000:]
    times = re.findall(r"time=(\d+):(\d+):([\d.]+)", text)
    h, m, s = times[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


async def test_package_hls_ladder(ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "pkg"
    ladder = [Rung(height=480, bitrate_kbps=900), Rung(height=240, bitrate_kbps=400),
              Rung(height=120, bitrate_kbps=150, audio_bitrate_kbps=None)]  # fmt: skip
    op = Package(ladder=ladder, segment_seconds=1.0)
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip.parent, tmp_path], _spec(clip, op, out))
    ctx.verified_encoders = frozenset({"libx264", "aac"})
    result = await run_package(ctx)
    assert result.dropped_rungs == ["480p (source is 240p)"]
    assert [(r.width, r.height) for r in result.renditions] == [(320, 240), (160, 120)]
    master = await asyncio.to_thread((out / "master.m3u8").read_text)
    assert "RESOLUTION=320x240" in master and "RESOLUTION=160x120" in master
    variants = [line for line in master.splitlines() if line.endswith(".m3u8")]
    assert len(variants) == 2
    spans = []
    for variant in variants:
        assert abs(await _plays(ffmpeg_tools, out / variant) - 2.0) < 0.2
        text = await asyncio.to_thread((out / variant).read_text)
        spans.append(re.findall(r"#EXTINF:([\d.]+)", text))
    assert spans[0] == spans[1] and len(spans[0]) == 2  # GOPs aligned: same 1 s segments
    assert "master" in [f.role for f in result.outputs]
    siblings = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert not [n for n in siblings if n.endswith(".partial")]


async def test_package_dash_and_hls(ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "dash"
    ladder = [Rung(height=240, bitrate_kbps=400), Rung(height=120, bitrate_kbps=150)]
    op = Package(ladder=ladder, dash=True, segment_seconds=1.0)
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip.parent, tmp_path], _spec(clip, op, out))
    ctx.verified_encoders = frozenset({"libx264", "aac"})
    result = await run_package(ctx)
    assert result.dropped_rungs == []
    mpd = await asyncio.to_thread((out / "manifest.mpd").read_text)
    assert mpd.count("<Representation ") == 3  # two video rungs + one audio
    assert abs(await _plays(ffmpeg_tools, out / "manifest.mpd") - 2.0) < 0.2
    master = await asyncio.to_thread((out / "master.m3u8").read_text)
    assert master.count("#EXT-X-STREAM-INF") == 2
    with pytest.raises(InvalidJob, match="directory"):  # refused, never overwritten
        await run_package(ctx)


async def test_package_hls_ts_segments(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ts pkg"
    op = Package(ladder=[Rung(height=120, bitrate_kbps=200)], hls_segment_type="mpegts")
    roots = [clip_small.parent, tmp_path]
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", roots, _spec(clip_small, op, out))
    ctx.verified_encoders = frozenset({"libx264", "aac"})
    await run_package(ctx)
    segments = await asyncio.to_thread(lambda: sorted((out / "stream_0").glob("*.ts")))
    assert segments
    assert abs(await _plays(ffmpeg_tools, out / "stream_0" / "index.m3u8") - 1.0) < 0.2


async def test_analyze_opens_its_two_inputs_at_once(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The input's probe waits here until the reference's has begun: one after the other, it
    would wait out the minute and the test fails."""
    real = analyze.open_input
    began = asyncio.Event()
    overlapped: list[bool] = []

    async def opening(ctx: Any, uri: str, role: str = "input") -> Any:
        if role == "reference":
            began.set()
        else:
            try:
                await asyncio.wait_for(began.wait(), 60)
                overlapped.append(True)
            except TimeoutError:
                overlapped.append(False)
        return await real(ctx, uri, role)

    monkeypatch.setattr(analyze, "open_input", opening)
    op = Analyze(reference=clip_small.as_uri(), vmaf=False, ssim=False)
    spec = _spec(clip_small, op, tmp_path / "report.json")
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip_small.parent, tmp_path], spec)
    result = await run_analyze(ctx)
    assert overlapped == [True]
    assert result.psnr is not None and result.vmaf is None


async def test_analyze_names_the_input_first_when_both_are_refused(
    ffmpeg_tools: FfmpegTools, tmp_path: Path
) -> None:
    op = Analyze(reference=(tmp_path / "absent-reference.mp4").as_uri())
    spec = _spec(tmp_path / "absent-input.mp4", op, tmp_path / "report.json")
    with pytest.raises(JobError, match="absent-input"):
        await run_analyze(_ctx(ffmpeg_tools, tmp_path / "s", [tmp_path], spec))


async def test_deep_probe_decodes_beside_the_probe(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe waits here for the decode's command: one after the other, it would wait out
    the minute and the test fails."""
    announced = asyncio.Event()
    overlapped: list[bool] = []
    real = probe_op.probe_input

    async def probe_after_the_decode_began(*args: Any) -> Any:
        try:
            await asyncio.wait_for(announced.wait(), 60)
            overlapped.append(True)
        except TimeoutError:
            overlapped.append(False)
        return await real(*args)

    async def on_command(encoder: str | None, argv: list[str]) -> None:
        announced.set()

    monkeypatch.setattr(probe_op, "probe_input", probe_after_the_decode_began)
    spec = _spec(clip_small, Probe(deep=True))
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip_small.parent], spec)
    ctx.on_command = on_command
    info = (await run_probe(ctx)).probe
    assert overlapped == [True]
    assert info is not None and info.decode_errors == 0 and info.duration_s is not None


async def test_a_deep_probe_over_the_limits_is_refused(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    spec = _spec(clip_small, Probe(deep=True))
    ctx = _ctx(ffmpeg_tools, tmp_path / "s", [clip_small.parent], spec)
    ctx.media = MediaAccess(limits=MediaSettings(max_duration_s=0.5))
    with pytest.raises(InputError, match="over the limit"):
        await run_probe(ctx)
