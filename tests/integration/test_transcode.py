"""The transcode (and canary) operation end to end on real ffmpeg with tiny generated clips."""

from __future__ import annotations

import asyncio
import hashlib
import shlex
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from daemon.errors import EncoderError, InputError, InvalidJob, JobCancelled, JobTimeout
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.paths import uri_of
from daemon.media.probe import probe_media
from daemon.ops import run_operation
from daemon.ops.context import JobContext, JobHandle
from daemon.ops.encoders import encoder_chain
from schemas.jobs import JobSpec, Requirements, Timeouts
from schemas.operations import Canary, Probe, Transcode
from schemas.results import JobResult
from tests.support.media import make_clip

SOFTWARE = frozenset({"libx264", "libx265", "libvpx-vp9", "libsvtav1", "aac", "libopus"})


@pytest_asyncio.fixture(scope="module")
async def long_clip(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """12 s of 640x360: x265 `medium` needs several seconds for it, time enough to interrupt."""
    out = media_dir / "transcode_long.mp4"
    return await make_clip(ffmpeg_tools.ffmpeg, out, seconds=12, size="640x360")


class Job:
    """One job's context plus what it reported: progress updates and ffmpeg command lines."""

    def __init__(
        self, tools: FfmpegTools, tmp_path: Path, media_dir: Path, src: Path, op: Any, **kw: Any
    ) -> None:
        self.out_dir = tmp_path / "out"
        self.output = kw.pop("output", self.out_dir / "result.mp4")
        self.updates: list[ProgressUpdate] = []
        self.commands: list[list[str]] = []
        self.on_update: Callable[[ProgressUpdate], Awaitable[None]] | None = None
        spec = JobSpec(
            job_id="job-1",
            input=kw.pop("input_uri", uri_of(src)),
            output=kw.pop("output_uri", uri_of(self.output)),
            operation=op,
            requirements=Requirements(accel=kw.pop("accel", "auto")),
            timeouts=Timeouts(hard_seconds=kw.pop("hard_seconds", 120.0)),
        )
        scratch = tmp_path / "scratch"
        scratch.mkdir(exist_ok=True)
        self.ctx = JobContext(
            handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
            verified_encoders=kw.pop("verified", SOFTWARE), hwaccels=frozenset(), threads=2,
            allowed_roots=[media_dir, tmp_path], progress=self._progress,
            progress_interval=0.2, on_command=self._command, **kw,
        )  # fmt: skip

    async def _progress(self, update: ProgressUpdate) -> None:
        self.updates.append(update)
        if self.on_update is not None:
            await self.on_update(update)

    async def _command(self, encoder: str | None, argv: list[str]) -> None:
        self.commands.append(argv)

    async def run(self) -> JobResult:
        return await asyncio.wait_for(run_operation(self.ctx), 60)

    async def files_left(self) -> list[str]:
        exists = await asyncio.to_thread(self.out_dir.exists)
        return sorted(p.name for p in self.out_dir.iterdir()) if exists else []

    def percents(self) -> list[float]:
        return [u.percent for u in self.updates if u.percent is not None]


def transcode(**kw: Any) -> Transcode:
    return Transcode(**{"preset": "ultrafast", "crf": 30, **kw})


async def sha256_of(path: Path) -> str:
    return hashlib.sha256(await asyncio.to_thread(path.read_bytes)).hexdigest()


async def test_h264_to_hevc_scaled_keeps_aspect(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, transcode(codec="hevc", height=120))
    result = await job.run()
    assert result.encoder == "libx265" and result.media_seconds == 2.0
    assert result.input_size_bytes and result.realtime_factor
    info = await probe_media(ffmpeg_tools, job.output)
    video, audio = info.streams
    assert (video.codec, video.width, video.height) == ("hevc", 160, 120)
    assert audio.codec == "aac"
    [out] = result.outputs
    assert out.uri == job.ctx.spec.output and out.sha256 == await sha256_of(job.output)
    assert out.size_bytes == info.size_bytes
    assert await job.files_left() == ["result.mp4"]  # no partial left beside it
    assert job.percents() == sorted(job.percents()) and job.percents()[-1] == 100.0
    [argv] = job.commands
    assert argv[argv.index("-protocol_whitelist") + 1] == "file"
    assert "+faststart" in argv


async def test_vp9_in_webm_with_opus(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    op = transcode(codec="vp9", container="webm", audio_codec="opus", width=160, crf=40)
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, op, output=tmp_path / "out" / "r.webm")
    result = await job.run()
    info = await probe_media(ffmpeg_tools, job.output)
    assert "webm" in info.container and result.encoder == "libvpx-vp9"
    assert [(s.codec, s.width, s.height) for s in info.streams] == [
        ("vp9", 160, 120),
        ("opus", None, None),
    ]


async def test_av1_cbr_in_mkv_without_audio(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    op = transcode(codec="av1", container="mkv", rate_control="cbr", bitrate_kbps=200)
    op.audio_codec = "none"
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip_small, op, output=tmp_path / "out" / "a.mkv")
    result = await job.run()
    info = await probe_media(ffmpeg_tools, job.output)
    assert result.encoder == "libsvtav1" and [s.codec for s in info.streams] == ["av1"]


async def test_two_pass_runs_twice_and_progress_spans_both(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    op = transcode(rate_control="two_pass", bitrate_kbps=300, audio_codec="copy")
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip_small, op)
    result = await job.run()
    first, second = job.commands
    assert first[first.index("-pass") + 1] == "1" and first[-3:] == ["-f", "null", "-"]
    assert second[second.index("-pass") + 1] == "2"
    assert 50.0 in job.percents() and job.percents()[-1] == 100.0
    assert job.percents() == sorted(job.percents())
    info = await probe_media(ffmpeg_tools, job.output)
    assert result.encoder == "libx264" and [s.codec for s in info.streams] == ["h264", "aac"]


async def test_failing_hardware_encoder_falls_back_within_the_attempt(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    verified = SOFTWARE | {"h264_vaapi"}
    bogus = str(tmp_path / "no-such-renderD128")
    job = Job(
        ffmpeg_tools, tmp_path, media_dir, clip_small, transcode(),
        verified=verified, render_node=bogus,
    )  # fmt: skip
    result = await job.run()
    assert result.encoder == "libx264"
    assert result.notes and "h264_vaapi failed" in result.notes[0]
    [failure] = job.ctx.encoder_failures
    assert isinstance(failure, EncoderError) and failure.encoder == "h264_vaapi"
    assert await job.files_left() == ["result.mp4"]


async def test_required_family_without_its_encoder_fails_the_last_one(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    only_hw = frozenset({"h264_vaapi", "aac"})
    job = Job(
        ffmpeg_tools, tmp_path, media_dir, clip_small, transcode(),
        verified=only_hw, accel="vaapi", render_node=str(tmp_path / "none"),
    )  # fmt: skip
    with pytest.raises(EncoderError):  # the only encoder allowed failed: nothing to fall to
        await job.run()
    assert await job.files_left() == []


def test_encoder_chain_order_and_restrictions() -> None:
    usable = {"libx264", "h264_qsv", "h264_nvenc", "h264_vaapi", "libsvtav1"}
    assert encoder_chain("h264", "auto", usable) == [
        "h264_nvenc",
        "h264_qsv",
        "h264_vaapi",
        "libx264",
    ]
    assert encoder_chain("h264", "software", usable) == ["libx264"]
    assert encoder_chain("h264", "qsv", usable) == ["h264_qsv"]
    assert encoder_chain("av1", "auto", usable) == ["libsvtav1"]
    with pytest.raises(InvalidJob, match="no verified nvenc encoder for hevc"):
        encoder_chain("hevc", "nvenc", usable)
    with pytest.raises(InvalidJob, match="no verified software encoder for hevc"):
        encoder_chain("hevc", "software", {"hevc_nvenc"})


async def test_withdrawn_encoders_and_missing_families_are_permanent(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(
        ffmpeg_tools, tmp_path, media_dir, clip_small, transcode(),
        withdrawn_encoders=frozenset({"libx264"}),
    )  # fmt: skip
    with pytest.raises(InvalidJob, match="no verified encoder for h264") as info:
        await job.run()
    assert info.value.kind == "permanent" and job.commands == []
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip_small, transcode(), accel="nvenc")
    with pytest.raises(InvalidJob, match="no verified nvenc encoder for h264"):
        await job.run()


async def test_unreadable_input_is_an_input_error_with_a_tail(
    ffmpeg_tools: FfmpegTools, tmp_path: Path, media_dir: Path
) -> None:
    bad = tmp_path / "bad.mp4"
    await asyncio.to_thread(bad.write_bytes, b"\x00garbage" * 500)
    job = Job(ffmpeg_tools, tmp_path, media_dir, bad, transcode())
    with pytest.raises(InputError, match="Invalid data") as info:
        await job.run()
    assert info.value.stderr_tail and info.value.kind == "permanent"
    assert await job.files_left() == []


async def test_missing_video_stream_is_refused_before_encoding(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip_small, transcode(video_stream=1))
    with pytest.raises(InputError, match="no video stream #1"):
        await job.run()
    assert job.commands == []


async def test_cancel_mid_encode_leaves_no_partial(
    ffmpeg_tools: FfmpegTools, long_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(
        ffmpeg_tools, tmp_path, media_dir, long_clip, transcode(codec="hevc", preset="medium")
    )

    async def cancel(update: ProgressUpdate) -> None:
        job.ctx.handle.cancel("operator cancel")

    job.on_update = cancel
    with pytest.raises(JobCancelled, match="operator cancel"):
        await job.run()
    assert job.updates and not job.updates[-1].ended
    assert await job.files_left() == []


async def test_hard_timeout_stops_the_encode(
    ffmpeg_tools: FfmpegTools, long_clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    op = transcode(codec="hevc", preset="medium")
    job = Job(ffmpeg_tools, tmp_path, media_dir, long_clip, op, hard_seconds=1.0)
    with pytest.raises(JobTimeout) as info:
        await job.run()
    assert info.value.kind == "timeout" and info.value.stderr_tail
    assert await job.files_left() == []


def gated_ffmpeg(tools: FfmpegTools, tmp_path: Path) -> tuple[FfmpegTools, Path]:
    """The real ffmpeg behind a gate: an encode (a run with `-progress`) starts only once the
    returned gate file exists, so the job is certain to be running until the test releases it.
    Probes pass straight through. The wait is bounded (5 min) so nothing outlives the test.

    The waiting is done by one Python process that then execs ffmpeg: it starts no children,
    so a SIGSTOP to its group always leaves it stopped (a shell's `sleep` loop can be caught
    mid-vfork, its parent then showing D instead of T)."""
    gate = tmp_path / "gate"
    script = tmp_path / "gate.py"
    script.write_text(
        "import os, sys, time\n"
        f"gate, ffmpeg = {str(gate)!r}, {tools.ffmpeg!r}\n"
        "if '-progress' in sys.argv[1:]:\n"
        "    for _ in range(6000):\n"
        "        if os.path.exists(gate):\n"
        "            break\n"
        "        time.sleep(0.05)\n"
        "os.execv(ffmpeg, [ffmpeg, *sys.argv[1:]])\n"
    )
    wrapper = tmp_path / "ffmpeg-gated"
    python, code = shlex.quote(sys.executable), shlex.quote(str(script))
    wrapper.write_text(f'#!/bin/sh\nexec {python} {code} "$@"\n')
    wrapper.chmod(0o755)
    return FfmpegTools(ffmpeg=str(wrapper), ffprobe=tools.ffprobe), gate


def _proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def test_pause_then_resume_finishes(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    tools, gate = gated_ffmpeg(ffmpeg_tools, tmp_path)
    job = Job(tools, tmp_path, media_dir, clip_small, transcode(audio_codec="none"))
    control = job.ctx.handle
    run = asyncio.create_task(job.run())
    for _ in range(3000):  # until the encode is attached; it cannot end before the gate opens
        if control.pid is not None or run.done():
            break
        await asyncio.sleep(0.01)
    pid = control.pid
    assert pid is not None, run
    control.pause()
    await asyncio.to_thread(gate.touch)
    # Stopped (SIGSTOP to its group): the open gate cannot be seen, the job cannot advance.
    # The stop takes effect when the kernel next schedules the process: wait for it, bounded.
    for _ in range(3000):
        if await asyncio.to_thread(_proc_state, pid) == "T":
            break
        await asyncio.sleep(0.01)
    assert await asyncio.to_thread(_proc_state, pid) == "T"
    assert control.pid == pid and not run.done()
    control.resume()
    result = await asyncio.wait_for(run, 60)
    assert job.percents()[-1] == 100.0 and result.outputs
    assert control.paused_total_s > 0


async def test_odd_file_names_transcode_fine(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path, media_dir: Path
) -> None:
    src = tmp_path / "in" / "-y 'q\"uo\nte' $(touch x);|.mp4"
    await asyncio.to_thread(src.parent.mkdir)
    await asyncio.to_thread(shutil.copy, clip_small, src)
    out = tmp_path / "out" / "-i out put\n'#?.mp4"
    job = Job(ffmpeg_tools, tmp_path, media_dir, src, transcode(audio_codec="copy"), output=out)
    result = await job.run()
    assert await job.files_left() == [out.name]
    assert result.outputs[0].uri == uri_of(out)
    assert not await asyncio.to_thread((tmp_path / "x").exists)


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:9/a.mp4",
        "concat:{clip}|{clip}",
        "subfile,,start,0,end,100,,:{clip}",
        "file://{clip}/../../etc/passwd",
        "file:///etc/passwd",
    ],
)
async def test_forbidden_inputs_are_refused_before_ffmpeg(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path, uri: str
) -> None:
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, transcode(), input_uri=uri.format(clip=clip))
    with pytest.raises(InvalidJob) as info:
        await job.run()
    assert info.value.kind == "permanent" and job.commands == []


async def test_output_over_its_own_input_is_refused(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, transcode(), output=clip)
    with pytest.raises(InvalidJob, match="same file"):
        await job.run()


async def test_probe_dispatches_through_run_operation(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, Probe())
    result = await job.run()
    assert result.probe is not None and result.probe.streams


async def test_canary_sleeps_and_can_be_cancelled(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, Canary(sleep_seconds=0.05))
    result = await job.run()
    assert result.encoder is None and result.outputs == [] and result.wall_seconds > 0
    job = Job(ffmpeg_tools, tmp_path, media_dir, clip, Canary(sleep_seconds=30))
    run = asyncio.create_task(job.run())
    await asyncio.sleep(0.05)
    job.ctx.handle.cancel()
    with pytest.raises(JobCancelled):
        await run
