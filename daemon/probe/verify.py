"""Test encodes: a few lavfi frames through each candidate encoder; only what works is offered."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from daemon.probe.candidates import Candidate, candidate_for
from daemon.probe.dri import RenderNode
from daemon.probe.gpu import CUDA_ENV
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
    extra = ["-gpu", str(cand.gpu)] if cand.gpu is not None else []  # this GPU, not the first
    if cand.audio:
        argv += ["-f", "lavfi", "-i", AUDIO_SOURCE, "-t", "0.2", "-c:a", cand.name]
    else:
        argv += ["-f", "lavfi", "-i", VIDEO_SOURCE, "-frames:v", "5", *upload, "-c:v", cand.name]
        argv += [*ENCODER_ARGS.get(cand.name, []), *extra]
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
    result = await run_capture(encode_argv(ffmpeg, cand), within, CUDA_ENV)
    if result.ok:
        return None
    if result.timed_out:
        return f"test encode gave no result within {within:g}s"
    return failure_reason(result.stderr, result.returncode)


Outcome = tuple[Candidate, str | None]


async def verify_each(
    ffmpeg: str,
    candidates: Sequence[Candidate],
    *,
    concurrency: int = CONCURRENCY,
    within: float = TEST_TIMEOUT,
) -> list[Outcome]:
    """Test every candidate (one per device), `concurrency` at a time: (candidate, why not)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(cand: Candidate) -> str | None:
        async with gate:
            return await verify_one(ffmpeg, cand, within)

    reasons = await asyncio.gather(*(one(cand) for cand in candidates))
    return list(zip(candidates, reasons, strict=True))


def where(cand: Candidate) -> str:
    return f"GPU {cand.gpu}" if cand.gpu is not None else cand.device or ""


def summarize(outcomes: Sequence[Outcome]) -> tuple[list[str], list[DroppedEncoder]]:
    """An encoder is verified when it passed on any device; dropped (with every device's reason
    when there were several) when it passed on none."""
    names = list(dict.fromkeys(c.name for c, _ in outcomes))
    passed = {c.name for c, why in outcomes if why is None}
    dropped = []
    for name in names:
        if name in passed:
            continue
        failed = [(c, why or "") for c, why in outcomes if c.name == name]
        text = "; ".join(f"{where(c)}: {why}" for c, why in failed) if len(failed) > 1 else None
        dropped.append(DroppedEncoder(name=name, reason=(text or failed[0][1])[:REASON_MAX]))
    return [n for n in names if n in passed], dropped


def per_device(outcomes: Sequence[Outcome]) -> tuple[dict[int, list[str]], dict[str, list[str]]]:
    """Encoders that passed on each GPU (by index) and on each render node (by path)."""
    gpus: dict[int, list[str]] = {}
    nodes: dict[str, list[str]] = {}
    for cand, why in outcomes:
        if why is not None:
            continue
        if cand.gpu is not None:
            gpus.setdefault(cand.gpu, []).append(cand.name)
        elif cand.device is not None:
            nodes.setdefault(cand.device, []).append(cand.name)
    return gpus, nodes


async def verify_encoders(
    ffmpeg: str,
    candidates: Sequence[Candidate],
    *,
    concurrency: int = CONCURRENCY,
    within: float = TEST_TIMEOUT,
) -> tuple[list[str], list[DroppedEncoder]]:
    """Test every candidate, `concurrency` at a time; (verified names, dropped with reasons)."""
    outcomes = await verify_each(ffmpeg, candidates, concurrency=concurrency, within=within)
    return summarize(outcomes)


async def reverify(
    ffmpeg: str, name: str, gpus: Sequence[GpuInfo], nodes: Sequence[RenderNode]
) -> str | None:
    """Re-test one encoder (encoder health): None when it works again, else why not."""
    found = candidate_for(name, gpus, nodes)
    return found if isinstance(found, str) else await verify_one(ffmpeg, found)
