"""NVENC's session cap per GPU, found by holding sessions open until the driver refuses one.

NVML has no session-limit query: GeForce drivers cap concurrent sessions (3 to 8, by driver
release) and refuse the next with "OpenEncodeSessionEx failed: out of memory (10)" (older
drivers: "incompatible client key (21)"); pro and data-centre cards have no cap. So the probe
starts `up_to` short real-time encodes pinned to the GPU at once, each holding its session for
a few seconds, and counts: the number that opened when any was refused is the cap; when all
opened the cap is at least `up_to` (reported as `up_to`: the node never needs more than it
proved). Bounded: `up_to` processes of a few seconds each, killed at a deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from daemon.probe.gpu import CUDA_ENV
from daemon.probe.run import RunResult, run_capture

#: Seconds each session is held (real time, `-re`): long enough for all to overlap.
HOLD_SECONDS = 3.0
DEADLINE = 30.0
#: The driver's words for "no more sessions" (lower-cased).
REFUSED = ("out of memory (10)", "incompatible client key (21)")


def session_argv(ffmpeg: str, gpu: int, encoder: str = "h264_nvenc") -> list[str]:
    return [
        ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=256x144:rate=25", "-t", f"{HOLD_SECONDS:g}",
        "-c:v", encoder, "-gpu", str(gpu), "-f", "null", "-",
    ]  # fmt: skip


def refused(stderr: str) -> bool:
    text = stderr.lower()
    return "openencodesessionex failed" in text and any(r in text for r in REFUSED)


def session_limit(results: Sequence[tuple[bool, str]]) -> tuple[int | None, str]:
    """(cap, how it was found) from concurrent runs' (succeeded, stderr); cap None when the
    runs failed for another reason (no NVENC at all: the probe says nothing about a cap)."""
    opened = sum(1 for ok, _ in results if ok)
    refusals = sum(1 for ok, err in results if not ok and refused(err))
    others = len(results) - opened - refusals
    if refusals and opened:
        return opened, f"driver refused session {opened + 1} of {len(results)} opened at once"
    if opened == len(results) and opened:
        return opened, f"all {opened} sessions opened at once (the cap may be higher)"
    if refusals:  # the GPU's sessions are all taken by others right now
        return None, f"every one of {len(results)} sessions was refused (encoder busy?)"
    return None, f"{others} of {len(results)} test sessions failed for another reason"


async def probe_session_limit(
    ffmpeg: str, gpu: int, up_to: int, *, encoder: str = "h264_nvenc", within: float = DEADLINE
) -> tuple[int | None, str]:
    """Open `up_to` sessions on GPU `gpu` at once; (cap or None, note)."""
    if up_to <= 0:
        return None, "session probe off"

    async def one() -> RunResult:
        return await run_capture(session_argv(ffmpeg, gpu, encoder), within, CUDA_ENV)

    runs = await asyncio.gather(*(one() for _ in range(up_to)))
    return session_limit([(r.ok, r.stderr) for r in runs])
