"""The ffmpeg runner against real ffmpeg: progress, classification, cancel, pause, timeout, kill."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from daemon.errors import EncoderError, InputError, JobCancelled, JobError, JobTimeout
from daemon.ffmpeg.proc import OOM_FIRST, child_options, expendable
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.run import BASE_ARGS, run_ffmpeg
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle

#: `-re` paces the generator at real time: long enough to act on, and light on the CPU.
PACED = ["-re", "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25", "-f", "null", "-"]


def paced(seconds: float) -> list[str]:
    src = f"testsrc2=size=160x120:rate=25:duration={seconds}"
    return ["-re", "-f", "lavfi", "-i", src, "-f", "null", "-"]


class Recorder:
    """A progress sink that remembers updates and the pid of the ffmpeg that sent the first."""

    def __init__(self, control: JobHandle) -> None:
        self.control = control
        self.updates: list[ProgressUpdate] = []
        self.first = asyncio.Event()
        self.pid: int | None = None

    async def __call__(self, update: ProgressUpdate) -> None:
        self.updates.append(update)
        if self.pid is None:
            self.pid = self.control.pid
        self.first.set()


def state_of(pid: int) -> tuple[str, int]:
    """(process state letter, user+system CPU ticks) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0], int(fields[11]) + int(fields[12])


def gone(pid: int | None) -> bool:
    assert pid is not None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def wait_state(pid: int, want_stopped: bool) -> str:
    for _ in range(200):
        state, _ = await asyncio.to_thread(state_of, pid)
        if (state == "T") == want_stopped:
            return state
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} never reached stopped={want_stopped}")


async def test_success_reports_progress_ending_at_100(ffmpeg_tools: FfmpegTools) -> None:
    control = JobHandle("run")
    rec = Recorder(control)
    args = ["-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1", "-f", "null", "-"]
    result = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, args, control=control, on_progress=rec, duration_s=1.0
    )
    assert result.argv[: 1 + len(BASE_ARGS)] == [ffmpeg_tools.ffmpeg, *BASE_ARGS]
    assert rec.updates and rec.updates[-1].percent == 100.0 and rec.updates[-1].ended
    assert rec.updates[-1].frame == 25
    assert control.pid is None


async def test_missing_input_is_an_input_error_with_a_tail(ffmpeg_tools: FfmpegTools) -> None:
    args = ["-protocol_whitelist", "file", "-i", "file:/nonexistent/in.mp4", "-f", "null", "-"]
    with pytest.raises(InputError, match="No such file") as info:
        await run_ffmpeg(ffmpeg_tools.ffmpeg, args, control=JobHandle("run"))
    assert info.value.kind == "permanent" and info.value.exit_code not in (None, 0)
    assert "nonexistent" in info.value.stderr_tail


async def test_forbidden_protocol_is_an_input_error(ffmpeg_tools: FfmpegTools) -> None:
    args = ["-protocol_whitelist", "file", "-i", "http://127.0.0.1:9/x.mp4", "-f", "null", "-"]
    with pytest.raises(InputError, match="whitelist"):
        await run_ffmpeg(ffmpeg_tools.ffmpeg, args, control=JobHandle("run"))


async def test_encoder_failure_names_the_encoder(ffmpeg_tools: FfmpegTools) -> None:
    args = ["-init_hw_device", "vaapi=va:/nonexistent/renderD128", "-filter_hw_device", "va"]
    args += ["-f", "lavfi", "-i", "testsrc2=duration=0.2", "-vf", "format=nv12,hwupload"]
    args += ["-c:v", "h264_vaapi", "-f", "null", "-"]
    with pytest.raises(EncoderError) as info:
        await run_ffmpeg(ffmpeg_tools.ffmpeg, args, control=JobHandle("run"), encoder="h264_vaapi")
    assert info.value.encoder == "h264_vaapi" and info.value.kind == "transient"


@pytest.mark.parametrize("grace_s", [10.0, 0.0])
async def test_cancel_stops_ffmpeg(ffmpeg_tools: FfmpegTools, grace_s: float) -> None:
    """SIGINT first (ffmpeg exits on its own); with no grace at all, SIGKILL at once."""
    control = JobHandle("run", grace_s=grace_s)
    rec = Recorder(control)
    run = asyncio.create_task(
        run_ffmpeg(ffmpeg_tools.ffmpeg, PACED, control=control, on_progress=rec)
    )
    await asyncio.wait_for(rec.first.wait(), 20)
    control.cancel("operator asked")
    with pytest.raises(JobCancelled, match="operator asked"):
        await asyncio.wait_for(run, 20)
    assert gone(rec.pid)


async def test_cancel_before_start_spawns_nothing(ffmpeg_tools: FfmpegTools) -> None:
    control = JobHandle("run")
    control.cancel()
    with pytest.raises(JobCancelled):
        await run_ffmpeg(ffmpeg_tools.ffmpeg, PACED, control=control)


async def test_hard_timeout(ffmpeg_tools: FfmpegTools) -> None:
    control = JobHandle("run")
    control.arm(0.8)
    with pytest.raises(JobTimeout, match="hard timeout") as info:
        await run_ffmpeg(ffmpeg_tools.ffmpeg, PACED, control=control)
    assert info.value.kind == "timeout" and "testsrc2" in info.value.stderr_tail


async def test_pause_stops_the_process_and_resume_lets_it_finish(
    ffmpeg_tools: FfmpegTools,
) -> None:
    control = JobHandle("run")
    control.arm(60)
    rec = Recorder(control)
    run = asyncio.create_task(
        run_ffmpeg(ffmpeg_tools.ffmpeg, paced(1.5), control=control, on_progress=rec)
    )
    await asyncio.wait_for(rec.first.wait(), 20)
    assert rec.pid is not None
    control.pause()
    await wait_state(rec.pid, want_stopped=True)
    _, ticks = await asyncio.to_thread(state_of, rec.pid)
    await asyncio.sleep(0.3)
    state, ticks_later = await asyncio.to_thread(state_of, rec.pid)
    assert (state, ticks_later) == ("T", ticks)  # a stopped process does no work
    assert control.remaining() is None  # the hard-timeout clock stands still while paused
    control.resume()
    result = await asyncio.wait_for(run, 30)
    assert result.last is not None and result.last.percent == 100.0
    assert control.paused_total_s >= 0.3


async def test_pause_before_start_holds_the_next_run(ffmpeg_tools: FfmpegTools) -> None:
    control = JobHandle("run")
    control.pause()
    run = asyncio.create_task(run_ffmpeg(ffmpeg_tools.ffmpeg, paced(0.2), control=control))
    await asyncio.sleep(0.2)
    assert control.pid is None and not run.done()
    control.resume()
    await asyncio.wait_for(run, 20)


async def test_cancelling_the_task_kills_ffmpeg(ffmpeg_tools: FfmpegTools) -> None:
    control = JobHandle("run")
    rec = Recorder(control)
    run = asyncio.create_task(
        run_ffmpeg(ffmpeg_tools.ffmpeg, PACED, control=control, on_progress=rec)
    )
    await asyncio.wait_for(rec.first.wait(), 20)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert gone(rec.pid)


async def test_killed_ffmpeg_is_a_transient_failure(ffmpeg_tools: FfmpegTools) -> None:
    control = JobHandle("run")
    rec = Recorder(control)
    run = asyncio.create_task(
        run_ffmpeg(ffmpeg_tools.ffmpeg, PACED, control=control, on_progress=rec)
    )
    await asyncio.wait_for(rec.first.wait(), 20)
    assert rec.pid is not None
    os.kill(rec.pid, signal.SIGKILL)  # as the OOM killer would
    with pytest.raises(JobError, match="SIGKILL") as info:
        await asyncio.wait_for(run, 20)
    assert type(info.value) is JobError and info.value.kind == "transient"


CHILD = """
import asyncio, sys
from daemon.ffmpeg.run import run_ffmpeg
from daemon.job.handle import JobHandle

async def main() -> None:
    control = JobHandle("run")
    async def show(update):
        print(control.pid, flush=True)
    await run_ffmpeg(sys.argv[1], sys.argv[2:], control=control, on_progress=show)

asyncio.run(main())
"""


async def test_ffmpeg_dies_with_a_sigkilled_daemon(ffmpeg_tools: FfmpegTools) -> None:
    """No orphan keeps encoding (and rewriting a partial) after the daemon is SIGKILLed."""
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, ffmpeg_tools.ffmpeg, *PACED,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        pid = int(await asyncio.wait_for(daemon.stdout.readline(), 30))
    finally:
        daemon.kill()
        await daemon.wait()
    for _ in range(500):
        try:
            state, _ = await asyncio.to_thread(state_of, pid)
        except FileNotFoundError:
            return  # reaped
        if state == "Z":
            return  # dead; its new parent has not reaped it yet
        await asyncio.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"ffmpeg {pid} outlived its daemon (state {state})")


async def test_a_failing_progress_sink_does_not_stall_ffmpeg(ffmpeg_tools: FfmpegTools) -> None:
    async def broken(update: ProgressUpdate) -> None:
        raise RuntimeError("journal unavailable")

    result = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, paced(0.8), control=JobHandle("run"), on_progress=broken
    )
    assert result.last is not None and result.last.ended


async def test_control_sleep_honours_cancel_and_timeout() -> None:
    control = JobHandle("run")
    control.arm(0.2)
    with pytest.raises(JobTimeout):
        await asyncio.wait_for(control.sleep(30), 10)
    cancelled = JobHandle("run")
    sleeper = asyncio.create_task(cancelled.sleep(30))
    await asyncio.sleep(0)
    cancelled.cancel("stop")
    with pytest.raises(JobCancelled):
        await asyncio.wait_for(sleeper, 10)


async def test_children_are_the_first_to_go_out_of_memory() -> None:
    """Every ffmpeg and probe the daemon starts is marked for the OOM killer before the daemon."""
    proc = await asyncio.create_subprocess_exec("sleep", "30", **child_options())
    try:
        expendable(proc.pid)
        score = await asyncio.to_thread(Path(f"/proc/{proc.pid}/oom_score_adj").read_text)
        assert int(score) == OOM_FIRST
    finally:
        proc.kill()
        await proc.wait()
    expendable(proc.pid)  # gone: nothing to do, and no error
