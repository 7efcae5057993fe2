"""Test media made on the spot with ffmpeg's lavfi sources, and a plain duration reader."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

_DURATION = re.compile(rb"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


async def run_ffmpeg(ffmpeg: str, *args: str, within: float = 60.0) -> tuple[int, bytes]:
    """Run ffmpeg with `args`; returns (exit code, stderr). Killed after `within` seconds."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg,
        "-hide_banner",
        "-nostdin",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, err


async def make_clip(
    ffmpeg: str, out: Path, *, seconds: float, size: str = "320x240", fps: int = 25
) -> Path:
    """An H.264/AAC MP4: testsrc2 video and a 1 kHz sine, `seconds` long."""
    code, err = await run_ffmpeg(
        ffmpeg,
        "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={seconds}",
        "-f", "lavfi", "-i", f"sine=frequency=1000:sample_rate=48000:duration={seconds}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-b:a", "64k",
        "-shortest", "-movflags", "+faststart",
        str(out),
    )  # fmt: skip
    if code != 0:
        raise RuntimeError(f"ffmpeg could not make {out}: {err.decode(errors='replace')}")
    return out


async def media_duration(ffmpeg: str, path: Path) -> float:
    """Seconds from the `Duration:` line that `ffmpeg -i` prints (it exits 1: no output given)."""
    _, err = await run_ffmpeg(ffmpeg, "-i", str(path))
    match = _DURATION.search(err)
    if match is None:
        raise ValueError(f"no duration for {path}: {err[-500:].decode(errors='replace')}")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
