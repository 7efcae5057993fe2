"""Inspect a local media file: ffprobe's JSON where ffprobe exists, else `ffmpeg -i`'s banner.

Both paths return the same `ProbeInfo` (see daemon.media.parse). The input is opened as
`file:<absolute path>` under `-protocol_whitelist file`, like every file input, and failures are
classified like an ffmpeg run's (a missing or corrupt file is an InputError, permanent).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from daemon.config import MediaSettings
from daemon.errors import InputError, JobError
from daemon.ffmpeg.proc import capture
from daemon.ffmpeg.stderr import StderrTail, classify
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.limits import global_args, guard_args
from daemon.media.parse import parse_banner, parse_ffprobe_json
from daemon.media.paths import ffmpeg_arg
from schemas.results import ProbeInfo

PROBE_TIMEOUT = 60.0
#: `ffmpeg -i` with no output exits 1 after describing the input: that is the success case.
_NO_OUTPUT = "At least one output file must be specified"
#: What ffmpeg logs when the probed demuxer is outside `-format_whitelist`.
_NOT_ALLOWED = "Format not on whitelist"


async def probe_media(
    tools: FfmpegTools,
    path: Path,
    *,
    within: float = PROBE_TIMEOUT,
    limits: MediaSettings | None = None,
) -> ProbeInfo:
    """Describe `path`; with `limits`, under their demuxer allow-list and allocation caps."""
    guard = _guard(limits)
    if tools.ffprobe is not None:
        return await probe_with_ffprobe(tools.ffprobe, path, within=within, guard=guard)
    return await probe_with_ffmpeg(tools.ffmpeg, path, within=within, guard=guard)


def _guard(limits: MediaSettings | None) -> list[str]:
    if limits is None:
        return ["-protocol_whitelist", "file"]
    return [*global_args(limits), *guard_args(limits)]


async def probe_with_ffprobe(
    ffprobe: str, path: Path, *, within: float, guard: list[str] | None = None
) -> ProbeInfo:
    argv = [ffprobe, "-hide_banner", "-loglevel", "level+error"]
    argv += guard or ["-protocol_whitelist", "file"]
    argv += ["-print_format", "json", "-show_format", "-show_streams", ffmpeg_arg(path)]
    code, out, err = await _capture(argv, within)
    if code != 0:
        raise _failed(code, err)
    try:
        return parse_ffprobe_json(out, await _size(path))
    except ValueError as exc:
        raise JobError(f"ffprobe gave unreadable output: {exc}", stderr_tail=err[-8192:]) from exc


async def probe_with_ffmpeg(
    ffmpeg: str, path: Path, *, within: float, guard: list[str] | None = None
) -> ProbeInfo:
    arg = ffmpeg_arg(path)
    argv = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "level+info"]
    argv += [*(guard or ["-protocol_whitelist", "file"]), "-i", arg]
    code, _, err = await _capture(argv, within)
    # The echoed name may hold newlines or text that looks like banner lines: take it out.
    text = err.replace(f"from '{arg}'", "from '<input>'")
    if code not in (0, 1) or _NO_OUTPUT not in text:
        raise _failed(code, text)
    try:
        return parse_banner(text, await _size(path))
    except ValueError as exc:
        raise InputError(f"ffmpeg could not describe the input: {exc}", stderr_tail=text) from exc


def _failed(code: int, stderr: str) -> JobError:
    if _NOT_ALLOWED in stderr:
        # A playlist, concat list or other demuxer outside the allow-list: never retried.
        return InputError(
            "input container is not an allowed media format (playlists, concat lists and "
            "generators are refused)",
            exit_code=code,
            stderr_tail=stderr[-8192:],
        )
    tail = StderrTail()
    for line in stderr.splitlines():
        tail.add(line)
    error = classify(code or 1, tail, encoder=None)
    error.reason = f"probe failed: {error.reason}"
    return error


async def _size(path: Path) -> int | None:
    try:
        return (await asyncio.to_thread(os.stat, path)).st_size
    except OSError:
        return None


async def _capture(argv: list[str], within: float) -> tuple[int, bytes, str]:
    """(exit code, stdout, stderr) of a short program; killed past `within` or if we are."""
    try:
        done = await capture(argv, within)
    except OSError as exc:
        raise JobError(f"cannot start {argv[0]!r}: {exc.strerror or exc}") from exc
    if done.returncode is None:
        raise JobError(f"probing the input took longer than {within:g} s")
    return done.returncode, done.stdout, done.stderr.decode(errors="replace")
