"""Run one transcode job as a producer sends it: JSON through the job decoder, then the
operation on real ffmpeg, with software encoders only; and the context any job's operation
takes on such a node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.paths import uri_of
from daemon.ops import run_operation
from daemon.ops.context import JobContext, JobHandle
from schemas.jobs import JobSpec
from schemas.operations import Operation
from schemas.registry import JOB_DECODER
from schemas.results import JobResult

SOFTWARE = frozenset({"libx264", "libx265", "libvpx-vp9", "libsvtav1", "aac", "libopus",
                      "libmp3lame"})  # fmt: skip


async def run_job(
    tools: FfmpegTools,
    tmp_path: Path,
    roots: list[Path],
    src: Path,
    output: Path,
    *,
    filters: frozenset[str] = frozenset(),
    **op: Any,
) -> JobResult:
    """`filters`: the ffmpeg build's filters the node reports (burn-in needs `subtitles`)."""
    doc = {"job_id": "job-1", "input": uri_of(src), "output": uri_of(output),
           "operation": {"op": "transcode", "preset": "ultrafast", **op}}  # fmt: skip
    spec = JOB_DECODER.decode(json.dumps(doc).encode())
    scratch = tmp_path / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)

    async def progress(_: Any) -> None:
        pass

    ctx = JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=SOFTWARE, hwaccels=frozenset(), filters=filters, threads=2,
        allowed_roots=[*roots, tmp_path], progress=progress,
    )  # fmt: skip
    return await asyncio.wait_for(run_operation(ctx), 120)


def job_context(
    tools: FfmpegTools, tmp_path: Path, roots: list[Path], src: Path, out: Path, op: Operation
) -> JobContext:
    """A software node's context for `op` from `src` to `out`, reading under `roots`."""
    spec = JobSpec(job_id="j1", input=uri_of(src), output=uri_of(out), operation=op)
    (tmp_path / "scratch").mkdir(exist_ok=True)

    async def progress(_: Any) -> None:
        pass

    return JobContext(
        handle=JobHandle("j1"), spec=spec, scratch=tmp_path / "scratch", tools=tools,
        verified_encoders=frozenset({"libx264", "aac"}), hwaccels=frozenset(), threads=2,
        allowed_roots=[*roots, tmp_path], progress=progress,
    )  # fmt: skip
