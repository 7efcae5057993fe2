"""Run a short tool command (ffmpeg's listings, a test encode) with a deadline, capturing output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from daemon.ffmpeg.proc import capture


class ProbeError(RuntimeError):
    """The probe cannot describe this node at all (for example, the ffmpeg binary will not run)."""


@dataclass(frozen=True)
class RunResult:
    #: None when the process never started or was killed at its deadline.
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0


async def run_capture(
    argv: list[str], within: float, env: Mapping[str, str] | None = None
) -> RunResult:
    """Run `argv` (never through a shell) and collect its output; kill it at `within` seconds."""
    try:
        done = await capture(argv, within, env)
    except OSError as exc:
        return RunResult(None, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    out, err = _text(done.stdout), _text(done.stderr)
    return RunResult(done.returncode, out, err, timed_out=done.timed_out)


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
