"""Read back what an encode wrote, with ffmpeg alone (the wheel ships no ffprobe): keyframe
positions, bitstream header fields, the banner's stream line, and raw pixels."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path


async def ffmpeg_output(ffmpeg: str, *args: str, within: float = 60.0) -> tuple[bytes, str]:
    """(stdout, stderr) of one ffmpeg run; killed after `within` seconds."""
    proc = await asyncio.create_subprocess_exec(
        ffmpeg, "-hide_banner", "-nostdin", *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out, err.decode(errors="replace")


async def keyframes(ffmpeg: str, path: Path) -> list[int]:
    """Numbers of the decoded frames flagged key frames."""
    _, err = await ffmpeg_output(ffmpeg, "-i", str(path), "-map", "0:v:0", "-vf", "showinfo",
                                 "-f", "null", "-")  # fmt: skip
    return [int(n) for n in re.findall(r"\bn: *(\d+) .*\biskey:1", err)]


async def frame_count(ffmpeg: str, path: Path) -> int:
    _, err = await ffmpeg_output(ffmpeg, "-i", str(path), "-map", "0:v:0", "-vf", "showinfo",
                                 "-f", "null", "-")  # fmt: skip
    return len(re.findall(r"\bn: *\d+ pts:", err))


async def header_values(ffmpeg: str, path: Path, field: str) -> list[int]:
    """Every value of one video bitstream header field (trace_headers), e.g. `level_idc`."""
    _, err = await ffmpeg_output(ffmpeg, "-i", str(path), "-map", "0:v:0", "-c", "copy",
                                 "-bsf:v", "trace_headers", "-f", "null", "-")  # fmt: skip
    return [int(v) for v in re.findall(rf"\s{re.escape(field)}\s+[01]+ = (\d+)", err)]


async def stream_lines(ffmpeg: str, path: Path) -> list[str]:
    """The banner's `Stream #0:N` lines (codec, profile, pixel format and colour tags)."""
    _, err = await ffmpeg_output(ffmpeg, "-i", str(path))
    return [line.strip() for line in err.splitlines() if line.strip().startswith("Stream #0:")]


async def video_line(ffmpeg: str, path: Path) -> str:
    return next(line for line in await stream_lines(ffmpeg, path) if ": Video: " in line)


async def mean_rgb(ffmpeg: str, path: Path, crop: str, at: float = 0.5) -> tuple[float, ...]:
    """Mean (R, G, B) of the `w:h:x:y` window of the frame at `at` seconds."""
    out, err = await ffmpeg_output(ffmpeg, "-ss", str(at), "-i", str(path), "-frames:v", "1",
                                   "-vf", f"crop={crop}", "-f", "rawvideo", "-pix_fmt", "rgb24",
                                   "-")  # fmt: skip
    assert out, err
    pixels = len(out) // 3
    return tuple(sum(out[i::3]) / pixels for i in range(3))


async def idet_counts(ffmpeg: str, path: Path) -> tuple[int, int]:
    """(interlaced, progressive) frames as the idet filter reads the pictures themselves."""
    _, err = await ffmpeg_output(ffmpeg, "-i", str(path), "-map", "0:v:0", "-vf", "idet",
                                 "-f", "null", "-")  # fmt: skip
    found = re.findall(r"Multi frame detection: TFF: *(\d+) BFF: *(\d+) Progressive: *(\d+)", err)
    tff, bff, progressive = (int(v) for v in found[-1])
    return tff + bff, progressive
