"""Test encodes: a few lavfi frames through each candidate encoder; only what works is offered."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from daemon.probe.candidates import Candidate, candidate_for
from daemon.probe.dri import RenderNode
from daemon.probe.run import run_capture
from schemas.nodes import DroppedEncoder, GpuInfo

#: Deadline per test encode: hardware init (CUDA context, VA driver load) can take seconds.
TEST_TIMEOUT = 30.0
#: Test encodes in flight at once: enough to finish quickly, few enough not to load a busy box.
CONCURRENCY = 2
VIDEO_SOURCE = "testsrc2=size=256x144:rate=25"
AUDIO_SOURCE = "sine=frequency=440:sample_rate=48000"
#: libaom's default speed spends seconds on five tiny frames; its fastest is enough for a test.
ENCODER_ARGS: dict[str, list[str]] = {"libaom-av1": ["-cpu-used", "8"]}
REASON_MAX = 300

#: ffmpeg's follow-up lines after the real error: never the reason worth reporting.
_GENERIC = (
    "error while opening encoder",
    "could not open encoder before eof",
    "task finished with error code",
    "terminating thread",
    "error sending frames",
    "nothing was written into output file",
    "conversion failed",
    "error opening output",
    "error initializing output stream",
    "error selecting an encoder",
    "error parsing global options",
    "failed to set value",
    "device creation failed",
    "error reinitializing filters",
    "svt[info]",
    "svt[warn]",
)
_CONTEXT = re.compile(r"^(\[[^\]]*\]\s*)+")  # "[h264_nvenc @ 0x55..] " prefixes


def encode_argv(ffmpeg: str, cand: Candidate) -> list[str]:
    """The test encode's argument vector, with the hardware set-up the family needs."""
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error"]
    upload: list[str] = []
    if cand.family == "vaapi":
        argv += ["-vaapi_device", cand.device or "/dev/dri/renderD128"]
        upload = ["-vf", "format=nv12,hwupload"]
    elif cand.family == "qsv":
        device = f"qsv=hw:hw,child_device={cand.device}" if cand.device else "qsv=hw"
        argv += ["-init_hw_device", device, "-filter_hw_device", "hw"]
        upload = ["-vf", "format=nv12,hwupload=extra_hw_frames=64"]
    if cand.audio:
        argv += ["-f", "lavfi", "-i", AUDIO_SOURCE, "-t", "0.2", "-c:a", cand.name]
    else:
        argv += ["-f", "lavfi", "-i", VIDEO_SOURCE, "-frames:v", "5", *upload, "-c:v", cand.name]
        argv += ENCODER_ARGS.get(cand.name, [])
    return [*argv, "-f", "null", "-"]


def failure_reason(stderr: str, returncode: int | None) -> str:
    """The last meaningful stderr line, without ffmpeg's `[context @ 0x..]` prefixes."""
    lines = [_CONTEXT.sub("", line).strip() for line in stderr.splitlines()]
    lines = [line for line in lines if line]
    meaningful = [line for line in lines if not line.lower().startswith(_GENERIC)]
    fallback = f"test encode failed (ffmpeg exit status {returncode})"
    return (meaningful or lines or [fallback])[-1][:REASON_MAX]


async def verify_one(ffmpeg: str, cand: Candidate, within: float = TEST_TIMEOUT) -> str | None:
    """None when the test encode succeeds, else the one-line reason it failed."""
    result = await run_capture(encode_argv(ffmpeg, cand), within)
    if result.ok:
        return None
    if result.timed_out:
        return f"test encode gave no result within {within:g}s"
    return failure_reason(result.stderr, result.returncode)


async def verify_encoders(
    ffmpeg: str,
    candidates: Sequence[Candidate],
    *,
    concurrency: int = CONCURRENCY,
    within: float = TEST_TIMEOUT,
) -> tuple[list[str], list[DroppedEncoder]]:
    """Test every candidate, `concurrency` at a time; (verified names, dropped with reasons)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(cand: Candidate) -> str | None:
        async with gate:
            return await verify_one(ffmpeg, cand, within)

    reasons = await asyncio.gather(*(one(cand) for cand in candidates))
    verified = [c.name for c, why in zip(candidates, reasons, strict=True) if why is None]
    dropped = [
        DroppedEncoder(name=c.name, reason=why)
        for c, why in zip(candidates, reasons, strict=True)
        if why is not None
    ]
    return verified, dropped


async def reverify(
    ffmpeg: str, name: str, gpus: Sequence[GpuInfo], nodes: Sequence[RenderNode]
) -> str | None:
    """Re-test one encoder (encoder health): None when it works again, else why not."""
    found = candidate_for(name, gpus, nodes)
    return found if isinstance(found, str) else await verify_one(ffmpeg, found)
