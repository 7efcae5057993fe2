"""Two-pass loudness normalisation on real ffmpeg: deliberately quiet tones come out at the
target, as ffmpeg's own EBU R128 meter (ebur128, not the loudnorm that did the work) reads them."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
import pytest_asyncio

from daemon.errors import InputError, JobCancelled
from daemon.ffmpeg.tools import FfmpegTools
from schemas.audioopts import Loudness
from tests.integration.test_transcode import Job, gated_ffmpeg, transcode
from tests.support.media import run_ffmpeg
from tests.support.probing import ffmpeg_output, stream_lines
from tests.support.transcodejob import run_job

#: Far below any target: the normalisation must add about 30 dB.
QUIET = "volume=-35dB"


async def r128(ffmpeg: str, path: Path, track: int = 0) -> tuple[float, float]:
    """(integrated LUFS, true peak dBTP) of one audio track, by ffmpeg's ebur128 meter."""
    _, err = await ffmpeg_output(ffmpeg, "-i", str(path), "-map", f"0:a:{track}",
                                 "-af", "ebur128=peak=true", "-f", "null", "-")  # fmt: skip
    summary = err[err.rindex("Summary:") :]
    loudness = re.search(r"I:\s+(-?[\d.]+) LUFS", summary)
    peak = re.search(r"Peak:\s+(-?[\d.]+) dBFS", summary)
    assert loudness is not None and peak is not None, summary
    return float(loudness.group(1)), float(peak.group(1))


@pytest_asyncio.fixture(scope="module")
async def quiet_tone(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """4 s of a stereo 440 Hz tone at 44.1 kHz, about -57 LUFS, in M4A."""
    out = media_dir / "quiet_tone.m4a"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration=4,{QUIET}",
        "-ac", "2", "-c:a", "aac", "-b:a", "96k", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest_asyncio.fixture(scope="module")
async def quiet_clip(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """3 s of 160x120 video with two quiet tracks: 48 kHz English, then 32 kHz French, 10 dB
    apart."""
    out = media_dir / "quiet_clip.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=3",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration=3,{QUIET}",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=32000:duration=3,volume=-25dB",
        "-map", "0:v", "-map", "1:a", "-map", "2:a",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
        "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    ("name", "target", "peak"),
    [("x.m4a", -23.0, -1.0), ("x.ogg", -16.0, -1.5), ("x.mp3", -18.0, -2.0)],
)
async def test_an_audio_only_output_reaches_the_target(
    ffmpeg_tools: FfmpegTools, quiet_tone: Path, tmp_path: Path, media_dir: Path,
    name: str, target: float, peak: float,
) -> None:  # fmt: skip
    before, _ = await r128(ffmpeg_tools.ffmpeg, quiet_tone)
    assert before < -50
    out = tmp_path / "out" / name
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], quiet_tone, out,
                           loudness={"integrated": target, "true_peak": peak})  # fmt: skip
    measured, true_peak = await r128(ffmpeg_tools.ffmpeg, out)
    assert abs(measured - target) <= 1.0
    assert true_peak <= peak + 0.5
    [report] = result.loudness
    assert (report.track, report.mode) == (0, "linear")  # a steady tone needs one gain
    assert report.input_i is not None and abs(report.input_i - before) <= 1.0
    assert report.output_i is not None and abs(report.output_i - target) <= 1.0
    assert report.output_tp is not None and report.output_tp <= peak + 0.5
    # Back at the source's rate (loudnorm itself may run at 192 kHz); ogg's opus is 48 kHz only.
    [line] = await stream_lines(ffmpeg_tools.ffmpeg, out)
    assert ("48000 Hz" if name == "x.ogg" else "44100 Hz") in line


async def test_a_video_output_normalises_every_track_separately(
    ffmpeg_tools: FfmpegTools, quiet_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "all.mp4"
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], quiet_clip, out,
                           audio_tracks="all", loudness={"integrated": -20})  # fmt: skip
    lines = await stream_lines(ffmpeg_tools.ffmpeg, out)
    assert "Video: h264" in lines[0] and len(lines) == 3
    assert "48000 Hz" in lines[1] and "32000 Hz" in lines[2]
    inputs = [r.input_i for r in result.loudness]
    assert inputs[0] is not None and inputs[1] is not None and inputs[1] - inputs[0] > 5
    for track in (0, 1):
        measured, true_peak = await r128(ffmpeg_tools.ffmpeg, out, track)
        assert abs(measured - -20.0) <= 1.0
        assert true_peak <= -1.0 + 0.5
        report = result.loudness[track]
        assert report.output_i is not None and abs(report.output_i - measured) <= 0.5


async def test_a_track_chosen_by_language_keeps_its_rate(
    ffmpeg_tools: FfmpegTools, quiet_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "fr.mkv"
    target = {"integrated": -24, "lra": 10}
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], quiet_clip, out,
                           audio_language="fra", loudness=target)  # fmt: skip
    [_, line] = await stream_lines(ffmpeg_tools.ffmpeg, out)
    assert "(fra)" in line and "32000 Hz" in line
    measured, _ = await r128(ffmpeg_tools.ffmpeg, out)
    assert abs(measured - -24.0) <= 1.0
    assert [r.track for r in result.loudness] == [0]
    with pytest.raises(InputError, match="matches no streams"):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], quiet_clip,
                      tmp_path / "out" / "de.mkv", audio_language="deu",
                      loudness={"integrated": -24})  # fmt: skip


async def test_trimmed_and_downmixed_audio_is_measured_as_encoded(
    ffmpeg_tools: FfmpegTools, quiet_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "mono.m4a"
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], quiet_clip, out,
                           start_seconds=0.5, duration_seconds=2.0, audio_layout="mono",
                           audio_sample_rate=22050, loudness={"integrated": -23})  # fmt: skip
    [line] = await stream_lines(ffmpeg_tools.ffmpeg, out)
    assert "22050 Hz, mono" in line
    measured, _ = await r128(ffmpeg_tools.ffmpeg, out)
    assert abs(measured - -23.0) <= 1.0
    assert result.loudness[0].output_i is not None


async def test_a_gain_that_would_break_the_peak_target_compresses_instead(
    ffmpeg_tools: FfmpegTools, quiet_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    # The English track is a mono tone at -57 LUFS: at -10 LUFS its peak would be -5.7 dBTP.
    out = tmp_path / "out" / "hot.m4a"
    target = {"integrated": -10, "true_peak": -6}
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], quiet_clip, out, loudness=target)
    [report] = result.loudness
    assert report.mode == "dynamic"
    assert any("compresses it dynamically" in note for note in result.notes)
    measured, true_peak = await r128(ffmpeg_tools.ffmpeg, out)
    assert abs(measured - -10.0) <= 1.0
    # loudnorm limits to -6; AAC then rebuilds part of the clipped peaks. Whatever it did, an
    # overshoot is never silent.
    overshoot = any("encoded true peak" in note for note in result.notes)
    assert overshoot == (true_peak > -6.0 + 0.5)


async def test_a_silent_track_is_left_alone_and_said_so(
    ffmpeg_tools: FfmpegTools, tmp_path: Path, media_dir: Path
) -> None:
    silent = tmp_path / "silent.m4a"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "anullsrc=r=48000:cl=stereo", "-t", "2", "-c:a", "aac", str(silent),
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "out" / "silent.mp3"
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], silent, out,
                           loudness={"integrated": -23})  # fmt: skip
    [report] = result.loudness
    assert report.mode == "none" and report.input_i is None and report.output_i is None
    assert any("silent" in note for note in result.notes)


async def test_three_runs_share_the_progress_scale(
    ffmpeg_tools: FfmpegTools, quiet_tone: Path, tmp_path: Path, media_dir: Path
) -> None:
    op = transcode(codec="none", loudness=Loudness(integrated=-23))
    job = Job(ffmpeg_tools, tmp_path, media_dir, quiet_tone, op, output=tmp_path / "out" / "x.m4a")
    await job.run()
    measure, encode, check = job.commands
    assert "print_format=json" in " ".join(measure) and measure[-3:] == ["-f", "null", "-"]
    assert "linear=true" in " ".join(encode) and encode[-1].endswith(".partial")
    assert "print_format=json" in " ".join(check) and check[-3:] == ["-f", "null", "-"]
    # Measuring 0-30 %, encoding 30-90 %, checking the output 90-100 %.
    assert {30.0, 90.0, 100.0} <= set(job.percents())
    assert job.percents() == sorted(job.percents())


async def test_a_video_two_pass_encode_with_loudness(
    ffmpeg_tools: FfmpegTools, quiet_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    op = transcode(rate_control="two_pass", bitrate_kbps=200, loudness=Loudness(integrated=-18))
    job = Job(ffmpeg_tools, tmp_path, media_dir, quiet_clip, op)
    result = await job.run()
    assert len(job.commands) == 4  # measure, video pass 1 (no audio), pass 2, check
    assert "loudnorm" not in " ".join(job.commands[1]) and "-an" in job.commands[1]
    measured, _ = await r128(ffmpeg_tools.ffmpeg, job.output)
    assert abs(measured - -18.0) <= 1.0
    assert [r.track for r in result.loudness] == [0]
    assert job.percents() == sorted(job.percents()) and job.percents()[-1] == 100.0


async def test_a_cancel_during_the_measuring_pass_stops_it(
    ffmpeg_tools: FfmpegTools, quiet_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    tools, _ = gated_ffmpeg(ffmpeg_tools, tmp_path)  # the gate never opens: pass 1 waits
    job = Job(tools, tmp_path, media_dir, quiet_clip, transcode(loudness=Loudness()))
    control = job.ctx.handle
    run = asyncio.create_task(job.run())
    for _ in range(3000):  # until pass 1 is attached; it cannot end before the gate opens
        if control.pid is not None or run.done():
            break
        await asyncio.sleep(0.01)
    assert control.pid is not None, run
    [measure] = job.commands
    assert "print_format=json" in " ".join(measure)
    control.cancel("operator cancel")
    with pytest.raises(JobCancelled, match="operator cancel"):
        await asyncio.wait_for(run, 60)
    assert len(job.commands) == 1 and await job.files_left() == []


async def test_two_tracks_of_the_asked_language_say_only_one_is_normalised(
    ffmpeg_tools: FfmpegTools, tmp_path: Path, media_dir: Path
) -> None:
    src = tmp_path / "two_fra.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration=2,{QUIET}",
        "-f", "lavfi", "-i", f"sine=frequency=880:sample_rate=48000:duration=2,{QUIET}",
        "-map", "0:a", "-map", "1:a", "-c:a", "aac",
        "-metadata:s:a:0", "language=fra", "-metadata:s:a:1", "language=fra", str(src),
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "out" / "fr.mkv"
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], src, out, codec="none",
                           audio_language="fra", loudness={"integrated": -23})  # fmt: skip
    assert "2 audio tracks are tagged 'fra': only the first is normalised" in result.notes
    assert abs((await r128(ffmpeg_tools.ffmpeg, out))[0] - -23.0) <= 1.0
