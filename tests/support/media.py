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


async def make_hdr_clip(ffmpeg: str, out: Path, transfer: str, encoder: str) -> Path:
    """1 s of 10-bit BT.2020 with `transfer` (smpte2084: HDR10, arib-std-b67: HLG), tagged on
    the frames (this ffmpeg writes primaries and transfer from the frames, not from options)."""
    tags = f"setparams=color_primaries=bt2020:color_trc={transfer}:colorspace=bt2020nc"
    quiet = ["-x265-params", "log-level=error"] if encoder == "libx265" else ["-preset", "12"]
    code, err = await run_ffmpeg(
        ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=1",
        "-vf", f"{tags},format=yuv420p10le", "-c:v", encoder, *quiet,
        "-color_primaries", "bt2020", "-color_trc", transfer, "-colorspace", "bt2020nc",
        "-c:a", "aac", "-shortest", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out
