"""Child processes of the daemon: ffmpeg, ffprobe and short tool runs, never left orphaned.

Every program the daemon starts goes through `child_options` (its own session, so group signals
reach it and its helpers only, and a parent-death signal) and is stopped by process group. Short
runs (listings, probes, test encodes) go through `capture`, which bounds them in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Captured:
    """A short run's outcome; `returncode` is None when it was killed at its deadline."""

    returncode: int | None
    stdout: bytes
    stderr: bytes

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


async def capture(argv: list[str], within: float, env: Mapping[str, str] | None = None) -> Captured:
    """Run `argv` (never through a shell), collect its output, kill its group past `within`
    seconds or when the caller is cancelled; `env` adds variables. Raises OSError when it cannot
    start."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, **env} if env else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **child_options(),
    )
    expendable(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        signal_group(proc.pid, signal.SIGKILL)
        out, err = await proc.communicate()
        return Captured(None, out, err)
    finally:
        if proc.returncode is None:  # cancelled: the child must not outlive the call
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
    return Captured(proc.returncode, out, err)


#: The kernel's highest OOM score: of all processes, kill this one first when memory runs out.
OOM_FIRST = 1000


def expendable(pid: int) -> None:
    """Mark a child the one to kill first when memory runs out, before the daemon (whose unit
    scores it low): a job fails and is retried, the node stays up. Any process may raise a
    score; where /proc is not Linux's, nothing happens."""
    try:  # procfs, no disk behind it: one write syscall, never a wait
        fd = os.open(f"/proc/{pid}/oom_score_adj", os.O_WRONLY)
    except OSError:
        return
    try:
        os.write(fd, f"{OOM_FIRST}\n".encode())
    except OSError:
        pass  # it exited already: nothing to protect the node from
    finally:
        os.close(fd)


def child_options() -> dict[str, Any]:
    """Spawn options for every ffmpeg/ffprobe we start.

    Its own session, so group signals reach it and its children only; and a parent-death signal,
    so a SIGKILLed daemon leaves no orphan encoding on (and rewriting a partial output) while the
    job is redelivered elsewhere. systemd's cgroup kill does the same under the unit; this covers
    everything else. Only a pre-resolved libc call runs between fork and exec.
    """
    options: dict[str, Any] = {"start_new_session": True}
    if _PRCTL is not None:
        options["preexec_fn"] = functools.partial(_die_with_parent, os.getpid())
    return options


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _die_with_parent(parent: int) -> None:
    _PRCTL(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the daemon died before the signal was armed
        os.kill(os.getpid(), _SIGKILL)


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal a process group led by `pid`; a group that already exited is not an error."""
    # Its exit status tells the rest.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
