"""Find ffmpeg and ffprobe: the configured path, else PATH, else the imageio-ffmpeg wheel."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.configfile import ConfigError
from daemon.ffmpeg.proc import capture


class FfmpegNotFound(ConfigError):
    """No usable ffmpeg, or a configured program that is missing or not executable: a setting
    (or an install) to fix, so the CLI says it in one line and the daemon exits 78."""


@dataclass(frozen=True, slots=True)
class FfmpegTools:
    ffmpeg: str
    #: None when no ffprobe exists (the wheel ships none); callers probe with ffmpeg instead.
    ffprobe: str | None


def _configured(path: str, what: str) -> str:
    """A configured program: a path that must be an executable file, or a bare name on PATH."""
    if os.sep not in path:
        found = shutil.which(path)
        if found is None:
            raise FfmpegNotFound(f"configured {what} {path!r} is not on PATH")
        return found
    p = Path(path).expanduser()
    if not p.is_file() or not os.access(p, os.X_OK):
        raise FfmpegNotFound(f"configured {what} {path!r} does not exist or is not executable")
    return str(p.absolute())


def wheel_ffmpeg() -> str:
    """The static ffmpeg build shipped in the imageio-ffmpeg wheel (the `ffmpeg` extra)."""
    try:
        import imageio_ffmpeg
    except ImportError as exc:
        msg = "no ffmpeg on PATH: install the host's ffmpeg, or set ffmpeg in daemon.toml"
        raise FfmpegNotFound(msg + " (or install the 'ffmpeg' extra for a static build)") from exc

    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError as exc:
        raise FfmpegNotFound(f"no ffmpeg on PATH and none in imageio-ffmpeg: {exc}") from exc


def _ffprobe_near(ffmpeg: str) -> str | None:
    # A host's ffprobe lives next to its ffmpeg and matches its version; prefer that one.
    sibling = Path(ffmpeg).with_name("ffprobe")
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    return shutil.which("ffprobe")


def find_tools(ffmpeg: str | None = None, ffprobe: str | None = None) -> FfmpegTools:
    """Resolve both programs once at start-up; configured paths are checked, never replaced."""
    exe = _configured(ffmpeg, "ffmpeg") if ffmpeg else (shutil.which("ffmpeg") or wheel_ffmpeg())
    probe = _configured(ffprobe, "ffprobe") if ffprobe else _ffprobe_near(exe)
    return FfmpegTools(ffmpeg=exe, ffprobe=probe)


async def ffmpeg_version(ffmpeg: str, within: float = 10.0) -> str:
    """The version token of `ffmpeg -version` ("7.1.1", "n6.0", "9.0.2-static" ...)."""
    try:
        done = await capture([ffmpeg, "-version"], within)
    except OSError as exc:
        raise FfmpegNotFound(f"cannot run {ffmpeg}: {exc.strerror or exc}") from None
    if done.timed_out:
        raise FfmpegNotFound(f"{ffmpeg} -version did not answer in {within:.0f} s")
    out = done.stdout
    first = out.decode(errors="replace").partition("\n")[0].split()
    if done.returncode != 0 or first[:2] != ["ffmpeg", "version"] or len(first) < 3:
        raise FfmpegNotFound(f"{ffmpeg} does not look like ffmpeg: {' '.join(first)!r}")
    return first[2]
