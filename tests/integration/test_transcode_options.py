"""Transcode options on real ffmpeg with tiny generated clips, each checked by probing the output.

Jobs go in as JSON through the job decoder, as a producer sends them, so what the wire contract
settles (the container from the extension, defaults) is what the daemon runs.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.paths import uri_of
from daemon.media.probe import probe_media
from daemon.ops import run_operation
from daemon.ops.context import JobContext, JobHandle
from schemas.registry import JOB_DECODER
from schemas.results import JobResult

SOFTWARE = frozenset({"libx264", "libx265", "libvpx-vp9", "libsvtav1", "aac", "libopus",
                      "libmp3lame"})  # fmt: skip


async def run_job(
    tools: FfmpegTools, tmp_path: Path, roots: list[Path], src: Path, output: Path, **op: Any
) -> JobResult:
    doc = {"job_id": "job-1", "input": uri_of(src), "output": uri_of(output),
           "operation": {"op": "transcode", "preset": "ultrafast", **op}}  # fmt: skip
    spec = JOB_DECODER.decode(json.dumps(doc).encode())
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)

    async def progress(_: Any) -> None:
        pass

    ctx = JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=SOFTWARE, hwaccels=frozenset(), threads=2,
        allowed_roots=[*roots, tmp_path], progress=progress,
    )  # fmt: skip
    return await asyncio.wait_for(run_operation(ctx), 120)


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
