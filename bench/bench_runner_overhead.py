"""Runner overhead: a transcode through the daemon's operation runner vs. the same ffmpeg argv.

Prints the wall-time ratio (runner / direct) for the same command run in the same process tree.
The full daemon path (pull, journal, events) is measured by the dispatch benchmark once the
daemon lands; this one isolates what the runner adds (progress parsing, staging, hashing).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import find_tools
from daemon.job.handle import JobHandle
from daemon.media.paths import uri_of
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from schemas.jobs import JobSpec
from schemas.operations import Transcode

ROUNDS = 3
SOFTWARE = frozenset({"libx264", "aac"})


async def _sh(*argv: str) -> float:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise SystemExit(f"ffmpeg failed: {argv}")
    return time.perf_counter() - start


async def main() -> None:
    tools = find_tools()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src.mp4"
        await _sh(
            tools.ffmpeg,
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x720:rate=25",
            "-f",
            "lavfi",
            "-i",
            "sine",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-c:a",
            "aac",
            str(src),
        )
        runner_times, direct_times = [], []

        async def sink(update: ProgressUpdate) -> None:
            return None

        for n in range(ROUNDS):
            out = root / f"out-{n}.mp4"
            spec = JobSpec(
                job_id=f"b{n}",
                input=uri_of(src),
                output=uri_of(out),
                operation=Transcode(codec="h264", height=480, preset="veryfast"),
            )
            argv: list[str] = []

            async def on_command(
                encoder: str | None, cmd: list[str], argv: list[str] = argv
            ) -> None:
                argv[:] = cmd

            scratch = root / f"scratch-{n}"
            scratch.mkdir()
            ctx = JobContext(
                handle=JobHandle(spec.job_id),
                spec=spec,
                scratch=scratch,
                tools=tools,
                verified_encoders=SOFTWARE,
                hwaccels=frozenset(),
                threads=2,
                allowed_roots=[root],
                progress=sink,
                on_command=on_command,
            )
            start = time.perf_counter()
            await run_operation(ctx)
            runner_times.append(time.perf_counter() - start)
            # Same argv (progress flags included: same work), output pointed elsewhere.
            direct = [*argv[:-1], f"file:{root / f'direct-{n}.mp4'}"]
            direct_times.append(await _sh(*direct))
        r, d = statistics.median(runner_times), statistics.median(direct_times)
        print(f"transcode 720p->480p h264, {ROUNDS} rounds (median)")
        print(f"  through the runner: {r:.3f} s")
        print(f"  ffmpeg directly:    {d:.3f} s")
        print(f"  ratio runner/direct: {r / d:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
