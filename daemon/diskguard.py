"""Free-space watermark on the work directory: under it the daemon pulls no new work.

A transcode writes its output and scratch files next to the journal's disk; a node that keeps
pulling with a full disk fails every job it takes (and may corrupt its journal). So under the
watermark (bytes, percent, or both: either one trips it) the pullers stop, running jobs go on, the
heartbeat says `disk_low` and a `node_state` event gives the reason; when space returns, pulling
resumes. The limits are read on every check, so a SIGHUP reload can move them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil

log = logging.getLogger("flotilla.disk")
MIB = 1 << 20
#: (minimum free bytes, minimum free percent); 0 turns that limit off.
Limits = Callable[[], tuple[int, float]]


def low_reason(free: int, total: int, min_bytes: int, min_percent: float) -> str | None:
    """Why `free` of `total` bytes is too little, in words; None when it is enough."""
    if min_bytes > 0 and free < min_bytes:
        return f"disk low: {free // MIB} MiB free, under the {min_bytes // MIB} MiB watermark"
    percent = 100.0 * free / total if total > 0 else 0.0
    if min_percent > 0 and percent < min_percent:
        return f"disk low: {percent:.1f}% free, under the {min_percent:g}% watermark"
    return None


class DiskGuard:
    def __init__(self, path: Path, limits: Limits) -> None:
        self.path, self.limits = path, limits
        #: Why pulling is held back; None while there is room.
        self.reason: str | None = None

    @property
    def low(self) -> bool:
        return self.reason is not None

    async def check(self) -> bool:
        """Measure now; True when the verdict (low or not) changed."""
        try:
            usage = await asyncio.to_thread(psutil.disk_usage, str(self.path))
            reason = low_reason(usage.free, usage.total, *self.limits())
        except OSError as exc:  # the directory vanished: as good as full
            reason = f"disk low: cannot measure {self.path}: {exc.strerror or exc}"
        changed = (reason is None) != (self.reason is None)
        self.reason = reason
        if changed:
            log.warning("%s", reason or "disk space back over the watermark: pulling again")
        return changed

    async def run(self, interval: float, on_change: Callable[[], Awaitable[None]]) -> None:
        """Check every `interval` seconds; call `on_change` when the verdict flips."""
        while True:
            await asyncio.sleep(interval)
            if await self.check():
                await on_change()
