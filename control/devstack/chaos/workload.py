"""The jobs a chaos run submits: tiny lavfi clips, x264 transcodes, sent through the submit API.

Jobs go through the control plane's API (`<prefix>.api.job.submit`), as `flotilla submit` sends
them, so the run never depends on the raw submit subject's format. A submission counts only once
the API confirmed it (a stored or duplicate reply); until then it is retried with the same job
id, which the jobs stream deduplicates, through broker restarts and control-plane kills.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from common.natsconn import NatsSettings
from control.cli.apiclient import ApiClient
from control.errors import CliError
from schemas import api
from schemas.jobs import JobSpec
from schemas.registry import JOB_DECODER

#: How long one job is retried before it is recorded as never confirmed.
SUBMIT_LIMIT_S = 180.0
SUBMIT_RETRY_S = 1.0


@dataclass(frozen=True)
class Clips:
    fast: Path  # a second of small video: done in well under a second
    slow: Path  # several seconds of encoding: ffmpeg is mid-encode when a kill lands


async def _ffmpeg(ffmpeg: str, *args: str, within: float = 120.0) -> None:
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, err = await asyncio.wait_for(proc.communicate(), within)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg could not make a clip: {err.decode(errors='replace')[-500:]}")


async def make_clips(ffmpeg: str, media: Path) -> Clips:
    async def clip(name: str, size: str, seconds: int) -> Path:
        out = media / name
        await _ffmpeg(
            ffmpeg,
            "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate=48000:duration={seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-shortest", str(out),
        )  # fmt: skip
        return out

    fast, slow = await asyncio.gather(
        clip("fast.mp4", "160x120", 1), clip("slow.mp4", "640x360", 8)
    )
    return Clips(fast, slow)


def job_spec(job_id: str, src: Path, out_dir: Path, *, slow: bool) -> JobSpec:
    """A real transcode; the slow ones use a slow preset so that they run for seconds."""
    body = {
        "v": 1,
        "job_id": job_id,
        "input": f"file://{src}",
        "output": f"file://{out_dir / (job_id + '.mp4')}",
        "operation": {
            "op": "transcode",
            "codec": "h264",
            "preset": "slow" if slow else "ultrafast",
            "height": 240 if slow else 96,
        },
        "tenant": "chaos",
    }
    return JOB_DECODER.decode(msgspec.json.encode(body))


@dataclass
class Submission:
    job_id: str
    phase: str
    at: float
    confirmed: bool = False
    tries: int = 0
    error: str = ""


@dataclass
class Submitter:
    """Submits through the API with retries; keeps one connection, reopened after a failure."""

    #: Asked at each (re)connect: the fleet's URL is known only once it has started.
    settings: Callable[[], NatsSettings]
    submissions: dict[str, Submission] = field(default_factory=dict)
    _client: ApiClient | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def _call(self, spec: JobSpec) -> None:
        async with self._lock:
            if self._client is None:
                client = ApiClient(self.settings(), timeout=10.0)
                await client.__aenter__()
                self._client = client
            client = self._client
        try:
            await client.call("job.submit", api.SubmitRequest(job=spec), api.SubmitReply)
        except Exception:
            async with self._lock:
                if self._client is client:
                    self._client = None
                    with contextlib.suppress(Exception):
                        await client.__aexit__(None, None, None)
            raise

    async def submit(self, spec: JobSpec, phase: str) -> Submission:
        sub = Submission(spec.job_id, phase, time.time())
        self.submissions[spec.job_id] = sub
        deadline = time.monotonic() + SUBMIT_LIMIT_S
        while time.monotonic() < deadline:
            sub.tries += 1
            try:
                await self._call(spec)
            except (CliError, OSError, TimeoutError, Exception) as exc:  # every failure: retried
                sub.error = str(exc)[:200]
                await asyncio.sleep(SUBMIT_RETRY_S)
                continue
            sub.confirmed, sub.error = True, ""
            break
        return sub

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
            self._client = None


@dataclass
class Trickle:
    """A steady stream of jobs for one phase: one every `interval` seconds, at most `count`."""

    submitter: Submitter
    clips: Clips
    out_dir: Path
    run_id: str
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[Submission]] = field(default_factory=set)

    def one(self, phase: str, *, slow: bool) -> asyncio.Task[Submission]:
        n = next(self._seq)
        job_id = f"{self.run_id}-{phase}-{n:05d}"
        spec = job_spec(
            job_id, self.clips.slow if slow else self.clips.fast, self.out_dir, slow=slow
        )
        task = asyncio.create_task(self.submitter.submit(spec, phase))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self, phase: str, count: int, interval: float) -> None:
        """Submit `count` jobs, every other one slow, `interval` apart (cancel to stop early)."""
        for i in range(count):
            self.one(phase, slow=i % 2 == 0)
            await asyncio.sleep(interval)

    async def drain(self) -> None:
        """Until every submission in flight is confirmed or given up (bounded by SUBMIT_LIMIT_S)."""
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
