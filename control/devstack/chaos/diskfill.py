"""Disk full on one daemon's work dir, never on the machine's real disk.

Where this process may mount (root, with CAP_SYS_ADMIN), the node's work dir is a small tmpfs
mounted before the daemon starts; an episode fills it to the last byte with a file and removes
the file at the end, so the daemon's disk guard and its scratch writes meet a really full file
system. Elsewhere the episode falls back to configuration: the node is restarted with a
watermark of 100 % of its disk, so its guard sees a full disk, and restarted again with its
own configuration at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

#: The tmpfs is tiny next to memory; the daemon's watermark is set below it (see runner).
TMPFS_MB = 48
WATERMARK_MB = 16
FILLER = "chaos-filler"


async def _run(*argv: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        return await asyncio.wait_for(proc.wait(), 30.0)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return -1


async def mount_tmpfs(path: Path) -> bool:
    """Mount a TMPFS_MB tmpfs on `path`; False where this machine does not let us."""
    if os.geteuid() != 0:
        return False
    await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
    code = await _run(
        "mount", "-t", "tmpfs", "-o", f"size={TMPFS_MB}m,mode=0755", "tmpfs", str(path)
    )
    return code == 0


async def unmount(path: Path) -> None:
    await _run("umount", "-l", str(path))


def _fill(path: Path) -> int:
    """Write zeros into `path/FILLER` until the file system is full; returns bytes written."""
    written = 0
    fd = os.open(path / FILLER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        # Unbuffered, so ENOSPC comes here and never from a close; bounded even if it never comes.
        for size in (1 << 20, 4096, 1):
            while written < (TMPFS_MB + 1) << 20:
                try:
                    written += os.write(fd, b"\0" * size)
                except OSError:
                    break
    finally:
        os.close(fd)
    return written


async def fill(path: Path) -> int:
    return await asyncio.to_thread(_fill, path)


async def release(path: Path) -> None:
    with contextlib.suppress(OSError):
        await asyncio.to_thread((path / FILLER).unlink)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
