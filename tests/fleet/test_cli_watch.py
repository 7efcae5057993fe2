"""`flotilla watch` and `submit --wait/--watch` against a real dev fleet: a redrawn progress line
on a terminal (a pty), plain lines through a pipe, exit codes for completed and failed jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from control.devstack.fleet import DevFleet
from daemon.ffmpeg.tools import FfmpegTools
from tests.support.devfleet import dev_fleet, open_dir, run_cli
from tests.support.media import make_clip


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-cliwatch-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path) -> AsyncIterator[DevFleet]:
    async with dev_fleet(work, 1, roots=[media_dir, work / "out"]) as f:
        yield f


@pytest_asyncio.fixture(scope="module")
async def clip6(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """Long enough to report progress a few times."""
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "clip6.mp4", seconds=6)


def _read_all(fd: int) -> bytes:
    """Everything the child writes to the pty, until it closes its end (EIO on Linux)."""
    chunks = []
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def run_in_pty(*args: str, limit_s: float = 120.0) -> tuple[int, str]:
    """`python -m control ARGS` with its stdout on a terminal; returns (exit code, output)."""
    master, slave = pty.openpty()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    try:
        reader = asyncio.to_thread(_read_all, master)
        out, code = await asyncio.wait_for(asyncio.gather(reader, proc.wait()), limit_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    finally:
        os.close(master)
    return code, out.decode(errors="replace")


async def test_submit_watch_on_a_terminal_redraws_one_line(
    fleet: DevFleet, clip6: Path, work: Path
) -> None:
    code, out = await run_in_pty(
        "submit", "transcode", str(clip6), str(work / "out" / "tty.mp4"), "--height", "120",
        "--job-id", "tty-1", "--watch",
    )  # fmt: skip
    assert code == 0, out
    assert "\r" in out and "tty-1 [" in out and "ETA" in out, out
    assert "tty-1 completed on dev-1" in out


async def test_watch_through_a_pipe_prints_plain_lines(
    fleet: DevFleet, clip6: Path, work: Path
) -> None:
    res = await run_cli(
        "submit", "transcode", str(clip6), str(work / "out" / "pipe.mp4"), "--height", "120",
        "--job-id", "pipe-1",
    )  # fmt: skip
    assert res.rc == 0, res
    res = await run_cli("watch", "pipe-1")
    assert res.rc == 0, res
    assert "\r" not in res.out
    lines = res.out.splitlines()
    assert lines[-1].startswith("pipe-1 completed on dev-1 in ")
    assert all(line.startswith("pipe-1") for line in lines)
    # Watching a finished job ends at once, with the same verdict.
    again = await run_cli("watch", "pipe-1", "--json")
    assert again.rc == 0 and json.loads(again.out)["state"] == "completed"


async def test_failed_job_exits_1_with_its_reason(fleet: DevFleet, work: Path) -> None:
    missing = work / "out" / "missing.mp4"
    doc = {
        "job_id": "fail-1", "input": missing.as_uri(), "output": (work / "out" / "f.mp4").as_uri(),
        "operation": {"op": "transcode"}, "max_attempts": 1,
    }  # fmt: skip
    (work / "fail.json").write_text(json.dumps(doc))
    res = await run_cli("submit", str(work / "fail.json"), "--wait")
    assert res.rc == 1, res
    # The outcome of a job that did not complete is the command's error: one line on stderr.
    assert res.err.startswith("flotilla: error: fail-1 failed: "), res
    assert len(res.err.splitlines()) == 1 and res.out == "submitted fail-1 to pool cpu\n", res
    res = await run_cli("watch", "fail-1")
    assert res.rc == 1 and res.err.startswith("flotilla: error: fail-1 failed: "), res
    # A finally failed job becomes a dead letter (asynchronously); `jobs retry` re-runs it.
    for _ in range(100):
        status = json.loads((await run_cli("status", "fail-1", "--json")).out)
        if status["dead_lettered"]:
            break
        await asyncio.sleep(0.3)
    assert status["dead_lettered"], status
    res = await run_cli("jobs", "retry", "fail-1")
    assert res.rc == 0 and "fail-1 is back on the stream" in res.out, res
    res = await run_cli("watch", "fail-1")
    assert res.rc == 1 and "fail-1 failed: " in res.err, res
    events = json.loads((await run_cli("events", "fail-1", "--json")).out)["events"]
    assert [e["kind"] for e in events].count("failed") >= 2
