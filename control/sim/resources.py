"""CPU and memory of each component of a run, sampled with psutil by process id.

A component is a set of process trees (PostgreSQL: the postmaster and its backends; the nodes:
every simulator process). CPU is the sum over every process seen of its CPU time used between
its first and last sample, divided by the wall time sampled: 100 % is one core. RSS is the
largest sum of the component's resident sets in one sample (shared pages are counted once per
process, so PostgreSQL's figure overstates its memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil


@dataclass
class Usage:
    cpu_s: float = 0.0
    wall_s: float = 0.0
    rss_max: int = 0
    processes_max: int = 0

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class _Track:
    first: dict[int, float] = field(default_factory=dict)
    last: dict[int, float] = field(default_factory=dict)
    rss_max: int = 0
    procs_max: int = 0


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


class Sampler:
    """`components` maps a name to a function giving that component's root pids now; the
    children of those named in `alone` are not counted (the driver's children are the others)."""

    def __init__(
        self,
        components: dict[str, Callable[[], list[int]]],
        every_s: float = 2.0,
        alone: frozenset[str] = frozenset(),
    ) -> None:
        self.components, self.every_s, self.alone = components, every_s, alone
        self._tracks = {name: _Track() for name in components}
        self._start = 0.0
        self._end = 0.0

    def sample(self) -> None:
        for name, pids in self.components.items():
            track = self._tracks[name]
            rss, count = 0, 0
            for root in pids():
                procs = _tree(root)
                for p in procs[:1] if name in self.alone else procs:
                    with contextlib.suppress(psutil.Error):
                        with p.oneshot():
                            t = p.cpu_times()
                            rss += p.memory_info().rss
                        cpu = t.user + t.system
                        track.first.setdefault(p.pid, cpu)
                        track.last[p.pid] = cpu
                        count += 1
            track.rss_max = max(track.rss_max, rss)
            track.procs_max = max(track.procs_max, count)

    async def run(self, stop: asyncio.Event) -> None:
        self._start = time.monotonic()
        while not stop.is_set():
            await asyncio.to_thread(self.sample)
            self._end = time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.every_s)
        await asyncio.to_thread(self.sample)
        self._end = time.monotonic()

    def usage(self) -> dict[str, Usage]:
        wall = self._end - self._start
        out = {}
        for name, t in self._tracks.items():
            cpu = sum(t.last[pid] - t.first[pid] for pid in t.last)
            out[name] = Usage(cpu_s=cpu, wall_s=wall, rss_max=t.rss_max, processes_max=t.procs_max)
        return out
