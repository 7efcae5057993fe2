"""Run a short tool command (ffmpeg's listings, a test encode) with a deadline, capturing output."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


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


async def run_capture(argv: list[str], within: float) -> RunResult:
    """Run `argv` (never through a shell) and collect its output; kill it at `within` seconds."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return RunResult(None, "", f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        return RunResult(None, _text(out), _text(err), timed_out=True)
    finally:
        # A cancelled caller must not leave the child running.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return RunResult(proc.returncode, _text(out), _text(err))


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", errors="replace")
