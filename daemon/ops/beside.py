"""An ffmpeg run started beside the input's probe, for a command the probe is not expected to
change (daemon.ops.transcode: audio only, and video guessed as 8-bit SDR without subtitles;
daemon.ops.thumbnail: a sprite of an MP4/MOV file).

The probe still decides. Its refusal stops the run, and a command that would have been built
differently from the probe's answer stops the run and runs again, so the output is the one the
probe's plan makes. What this saves is the probe's time (an ffmpeg start and the demuxer's
analysis, about 25 ms on a 1080p file) on the path of a short job.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel `task` (an ffmpeg run it holds is killed) and wait until it has ended."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
