"""The pertitle operation on real ffmpeg with libvmaf: a still (easy) and a noisy (hard) title,
320x180 and 3 s, ladders of 180/144/90, called with a JobContext."""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

import pytest
import pytest_asyncio

from daemon.errors import InvalidJob, JobCancelled
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.ops.context import JobContext
from daemon.ops.pertitle.run import run_pertitle
from schemas.jobs import JobSpec
from schemas.operations import PerTitle, PerTitleRung
from schemas.results import JobResult, PerTitleReport
from tests.support.media import run_ffmpeg

TARGET = 93.0
RUNGS = [PerTitleRung(height=180), PerTitleRung(height=144), PerTitleRung(height=90)]
#: Both titles are sources of high quality (x264 at QP 0): encode losses are the rungs' own.
SOURCES = {
    "easy": "testsrc2=size=320x180:rate=25:duration=3,select='eq(n\\,0)',loop=loop=-1:size=1,"
    "trim=duration=3,setpts=N/25/TB",
    "hard": "testsrc2=size=320x180:rate=25:duration=3,noise=alls=60:allf=t",
}


async def _no_progress(update: ProgressUpdate) -> None:
    return None


def _ctx(tools: FfmpegTools, base: Path, src: Path, op: PerTitle, out: Path) -> JobContext:
    spec = JobSpec(job_id="pt1", input=src.as_uri(), output=out.as_uri(), operation=op)
    scratch = base / f"scratch-{out.name}"
    scratch.mkdir(exist_ok=True)
    return JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=frozenset({"libx264", "libx265", "aac"}), hwaccels=frozenset(),
        threads=2, allowed_roots=[base, src.parent], progress=_no_progress,
    )  # fmt: skip


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pertitle")


async def _source(tools: FfmpegTools, base: Path, name: str) -> Path:
    out = base / f"{name}.mp4"
    code, err = await run_ffmpeg(
        tools.ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi", "-i", SOURCES[name],
        "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(out),
    )  # fmt: skip
    assert code == 0, err.decode(errors="replace")
    return out


async def _ladder(tools: FfmpegTools, base: Path, name: str) -> JobResult:
    src = await _source(tools, base, name)
    op = PerTitle(rungs=RUNGS, target=TARGET, samples=2, sample_seconds=1.0)
    return await run_pertitle(_ctx(tools, base, src, op, base / f"{name}-ladder"))


@pytest_asyncio.fixture(scope="module")
async def easy(ffmpeg_tools: FfmpegTools, base: Path) -> JobResult:
    return await _ladder(ffmpeg_tools, base, "easy")


@pytest_asyncio.fixture(scope="module")
async def hard(ffmpeg_tools: FfmpegTools, base: Path) -> JobResult:
    return await _ladder(ffmpeg_tools, base, "hard")


def _report(result: JobResult) -> PerTitleReport:
    assert result.pertitle is not None
    return result.pertitle


@pytest.mark.parametrize("name", ["easy", "hard"])
async def test_the_top_rung_reaches_the_target_on_the_full_encode(
    name: str, easy: JobResult, hard: JobResult
) -> None:
    report = _report({"easy": easy, "hard": hard}[name])
    top = report.rungs[0]
    assert (top.height, top.width, top.dropped) == (180, 320, False)
    assert top.target_reached and top.predicted_quality >= TARGET
    assert top.measured_quality is not None
    assert abs(top.measured_quality - TARGET) <= 2.0, top
    assert 2 <= len(top.probes) <= 6 and (top.crf, top.predicted_quality) in top.probes
    assert report.sample_seconds == 1.0 and len(report.sample_starts) == 2
    assert all(0 <= s <= 2.0 for s in report.sample_starts)
    assert (report.display_width, report.display_height) == (320, 180)


async def test_the_hard_title_gets_a_lower_crf(easy: JobResult, hard: JobResult) -> None:
    easy_crf = {r.height: r.crf for r in _report(easy).rungs}
    hard_crf = {r.height: r.crf for r in _report(hard).rungs}
    assert all(hard_crf[h] < easy_crf[h] for h in (180, 144, 90)), (easy_crf, hard_crf)


async def test_the_easy_title_spends_fewer_bits_than_the_fixed_ladder(easy: JobResult) -> None:
    report = _report(easy)
    for rung in report.rungs:
        assert rung.bits_saved_estimated > 0 and rung.fixed_quality > 0
        if not rung.dropped:
            assert rung.size_bytes is not None and rung.bits_saved_measured is not None
            assert rung.bits_saved_measured == rung.fixed_bits_estimated - rung.size_bytes * 8
            assert rung.bits_saved_measured > 0
    assert report.bits_saved_measured is not None and report.bits_saved_measured > 0


async def test_the_rung_files_are_the_kept_rungs(easy: JobResult, base: Path) -> None:
    kept = [r for r in _report(easy).rungs if not r.dropped]
    assert [f.role for f in easy.outputs] == ["rung"] * len(kept)
    by_uri = {o.uri: o for o in easy.outputs}
    for rung in kept:
        path = base / "easy-ladder" / f"{rung.height}p.mp4"
        data = await asyncio.to_thread(path.read_bytes)
        output = by_uri[path.as_uri()]
        assert (output.size_bytes, output.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert rung.size_bytes == len(data)
    assert [(r.height, r.width) for r in easy.renditions] == [(r.height, r.width) for r in kept]
    names = await asyncio.to_thread(lambda: sorted(p.name for p in base.iterdir()))
    assert not [n for n in names if n.endswith(".partial")]


async def test_psnr_target_and_an_hls_package(
    ffmpeg_tools: FfmpegTools, base: Path, tmp_path: Path
) -> None:
    src = await _source(ffmpeg_tools, base, "easy")
    out = tmp_path / "hls ladder"
    op = PerTitle(rungs=[PerTitleRung(height=180, max_bitrate_kbps=400), PerTitleRung(height=90)],
                  metric="psnr", target=38.0, samples=1, sample_seconds=1.0, hls=True,
                  segment_seconds=1.0, codec="hevc")  # fmt: skip
    result = await run_pertitle(_ctx(ffmpeg_tools, tmp_path, src, op, out))
    report = _report(result)
    assert (report.metric, report.codec) == ("psnr", "hevc")
    top = report.rungs[0]
    assert top.measured_quality is not None and abs(top.measured_quality - 38.0) <= 2.0, top
    master = await asyncio.to_thread((out / "master.m3u8").read_text)
    variants = [line for line in master.splitlines() if line.endswith(".m3u8")]
    assert len(variants) == len([r for r in report.rungs if not r.dropped])
    for variant in variants:
        code, err = await run_ffmpeg(
            ffmpeg_tools.ffmpeg, "-loglevel", "level+info", "-protocol_whitelist", "file",
            "-i", str(out / variant), "-map", "0:v:0", "-f", "null", "-",
        )  # fmt: skip
        text = err.decode(errors="replace")
        assert code == 0 and "[error]" not in text, text[-2000:]
        h, m, s = re.findall(r"time=(\d+):(\d+):([\d.]+)", text)[-1]
        assert abs(int(h) * 3600 + int(m) * 60 + float(s) - 3.0) < 0.2
        playlist = await asyncio.to_thread((out / variant).read_text)
        assert len(re.findall(r"#EXTINF:", playlist)) == 3  # 1 s GOPs: segments line up
    assert {f.role for f in result.outputs} == {"rung", "master", "playlist"}


async def test_an_ssim_target(ffmpeg_tools: FfmpegTools, base: Path, tmp_path: Path) -> None:
    src = await _source(ffmpeg_tools, base, "hard")
    op = PerTitle(rungs=[PerTitleRung(height=90)], metric="ssim", target=0.9, samples=1,
                  sample_seconds=1.0, max_probes=4, preset="veryfast")  # fmt: skip
    result = await run_pertitle(_ctx(ffmpeg_tools, tmp_path, src, op, tmp_path / "ssim"))
    [rung] = _report(result).rungs
    assert rung.target_reached and 0.9 <= rung.predicted_quality <= 1.0
    assert rung.measured_quality is not None and abs(rung.measured_quality - 0.9) < 0.05
    assert len(rung.probes) <= 4


async def test_refusals_name_the_reason(
    ffmpeg_tools: FfmpegTools, base: Path, tmp_path: Path
) -> None:
    src = await _source(ffmpeg_tools, base, "easy")
    tall = PerTitle(rungs=[PerTitleRung(height=360)])
    with pytest.raises(InvalidJob, match="every rung is taller than the 180p source"):
        await run_pertitle(_ctx(ffmpeg_tools, tmp_path, src, tall, tmp_path / "tall"))
    hevc = PerTitle(rungs=RUNGS, codec="hevc")
    ctx = _ctx(ffmpeg_tools, tmp_path, src, hevc, tmp_path / "hevc")
    ctx.verified_encoders = frozenset({"libx264"})
    with pytest.raises(InvalidJob, match="no verified libx265 encoder"):
        await run_pertitle(ctx)
    taken = tmp_path / "taken"
    await asyncio.to_thread(taken.mkdir)  # refused, never overwritten
    with pytest.raises(InvalidJob, match="names a directory"):
        await run_pertitle(_ctx(ffmpeg_tools, tmp_path, src, PerTitle(rungs=RUNGS), taken))
    await asyncio.to_thread((tmp_path / "file").write_bytes, b"x")
    with pytest.raises(InvalidJob, match="already exists"):
        await run_pertitle(
            _ctx(ffmpeg_tools, tmp_path, src, PerTitle(rungs=RUNGS), tmp_path / "file")
        )


async def test_a_cancelled_search_leaves_nothing(
    ffmpeg_tools: FfmpegTools, base: Path, tmp_path: Path
) -> None:
    src = await _source(ffmpeg_tools, base, "easy")
    out = tmp_path / "cancelled"
    ctx = _ctx(ffmpeg_tools, tmp_path, src, PerTitle(rungs=RUNGS), out)
    runs: list[list[str]] = []

    async def on_command(encoder: str | None, argv: list[str]) -> None:
        runs.append(argv)
        if len(runs) == 4:  # the reel (a 3 s title is one sample), then the first rung's search
            ctx.handle.cancel("test")

    ctx.on_command = on_command
    with pytest.raises(JobCancelled):
        await run_pertitle(ctx)
    assert len(runs) == 4
    names = await asyncio.to_thread(lambda: [p.name for p in tmp_path.iterdir()])
    assert "cancelled" not in names and not [n for n in names if n.endswith(".partial")]


async def test_the_hls_package_carries_the_text_subtitles_as_webvtt_renditions(
    ffmpeg_tools: FfmpegTools, base: Path, tmp_path: Path
) -> None:
    srt = tmp_path / "eng.srt"
    srt.write_text("1\n00:00:00,200 --> 00:00:00,900\nHello there\n\n"
                   "2\n00:00:01,100 --> 00:00:01,800\nSecond cue\n\n")  # fmt: skip
    src = tmp_path / "subbed.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x90:rate=25:duration=2", "-i", str(srt),
        "-map", "0:v", "-map", "1", "-c:v", "libx264", "-qp", "0", "-preset", "ultrafast",
        "-pix_fmt", "yuv420p", "-c:s", "srt", "-metadata:s:s:0", "language=eng", str(src),
    )  # fmt: skip
    assert code == 0, err.decode(errors="replace")
    out = tmp_path / "subbed ladder"
    op = PerTitle(rungs=[PerTitleRung(height=90)], metric="psnr", target=35.0, samples=1,
                  sample_seconds=1.0, max_probes=2, preset="ultrafast", hls=True,
                  segment_seconds=1.0)  # fmt: skip
    result = await run_pertitle(_ctx(ffmpeg_tools, tmp_path, src, op, out))
    master = await asyncio.to_thread((out / "master.m3u8").read_text)
    media = [line for line in master.splitlines() if line.startswith("#EXT-X-MEDIA:")]
    assert media == ['#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="English",LANGUAGE="en",'
                     'DEFAULT=NO,AUTOSELECT=YES,URI="subs_0.m3u8"']  # fmt: skip
    variants = [line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF:")]
    assert variants and all(v.endswith(',SUBTITLES="subs"') for v in variants)
    vtt = await asyncio.to_thread((out / "subs_0.vtt").read_text)
    assert re.match(r"WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:\d+,LOCAL:00:00:00.000\n", vtt), vtt
    assert "00:00.200 --> 00:00.900\nHello there" in vtt and "Second cue" in vtt
    playlist = await asyncio.to_thread((out / "subs_0.m3u8").read_text)
    assert "subs_0.vtt\n#EXT-X-ENDLIST" in playlist
    assert "subs_0.m3u8" in {f.uri.rsplit("/", 1)[-1] for f in result.outputs}
    assert result.notes == []
    code, err = await run_ffmpeg(ffmpeg_tools.ffmpeg, "-protocol_whitelist", "file",
                                 "-i", str(out / "master.m3u8"))  # fmt: skip
    assert "Subtitle: webvtt" in err.decode(errors="replace")
    # The rung files stay video only.
    code, err = await run_ffmpeg(ffmpeg_tools.ffmpeg, "-i", str(out / "90p.mp4"))
    assert "Subtitle:" not in err.decode(errors="replace")
