"""Process plumbing for the embedded servers: free ports, spawning with a log file, stop by PID."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

import psutil

#: How much of a server's log an error message quotes.
LOG_TAIL_BYTES = 4000


class EmbeddedError(Exception):
    """An embedded server did not start (or stop); `log_tail` holds the end of its log."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(f"{message}\n--- log tail ---\n{log_tail}" if log_tail else message)
        self.log_tail = log_tail


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Ports the kernel hands out for port 0; all held open together so they differ."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, limit: int) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


async def log_tail(path: Path, limit: int = LOG_TAIL_BYTES) -> str:
    return await asyncio.to_thread(_tail, path, limit)


async def spawn(argv: Sequence[str], log: Path, cwd: Path) -> asyncio.subprocess.Process:
    """Start `argv` with stdout and stderr appended to `log`.

    A new session keeps a terminal's Ctrl-C away from the server, so that its owner decides
    the order of shutdown (drain the clients first, then stop the servers).
    """
    handle = await asyncio.to_thread(log.open, "ab")
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=handle,
            stderr=asyncio.subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )
    finally:
        # The child holds its own copy of the descriptor.
        await asyncio.to_thread(handle.close)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (it holds no port, file or memory)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


async def _wait_gone(pids: Sequence[int], within: float) -> None:
    # Orphans are reaped by init, not by us, so poll instead of waiting on them.
    for _ in range(int(within / 0.02)):
        if not any(pid_alive(pid) for pid in pids):
            return
        await asyncio.sleep(0.02)


async def stop_process(
    proc: asyncio.subprocess.Process, steps: Sequence[tuple[signal.Signals, float]]
) -> None:
    """Send each signal in turn, waiting up to its grace; end with SIGKILL of the whole tree.

    The tree is killed too because a server's helpers (PostgreSQL backends) outlive a killed
    parent for a while and would otherwise hold the port and the data directory.
    """
    for sig, grace in steps:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    if proc.returncode is not None:
        return
    children = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    await proc.wait()
    await _wait_gone([c.pid for c in children], 5.0)


class ServerProcess:
    """The one child process a server wrapper owns: pid, crash-kill and ordered stop."""

    _proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def kill(self) -> None:
        """SIGKILL at once, as a crash would."""
        await self._end([])

    async def _end(self, steps: list[tuple[signal.Signals, float]]) -> None:
        # Forget the process only once it is gone, so a cancelled stop can be retried.
        if self._proc is not None:
            await stop_process(self._proc, steps)
            self._proc = None
