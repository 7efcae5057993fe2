"""The host itself: CPU model and cores, memory, and the disk under the work directory."""

from __future__ import annotations

import asyncio
import platform
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from schemas.nodes import CpuInfo

CPUINFO = Path("/proc/cpuinfo")


@dataclass(frozen=True)
class HostInfo:
    hostname: str
    cpu: CpuInfo
    memory_total_bytes: int
    disk_total_bytes: int
    disk_free_bytes: int


def cpu_model(cpuinfo: str) -> str | None:
    """The first `model name` in /proc/cpuinfo text (x86); other keys name ARM parts poorly."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def nearest_existing(path: Path) -> Path:
    """`path` or its closest existing parent: the work directory may not exist before first use."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:  # an unreadable parent: keep walking up
            continue
    return Path("/")


def _read_cpuinfo() -> str:
    try:
        return CPUINFO.read_text(errors="replace")
    except OSError:
        return ""


def _cpu() -> CpuInfo:
    logical = psutil.cpu_count(logical=True) or 1
    # psutil answers None for physical cores where the kernel does not say (some VMs, ARM).
    physical = psutil.cpu_count(logical=False) or logical
    model = cpu_model(_read_cpuinfo()) or platform.processor() or platform.machine() or "unknown"
    return CpuInfo(model=model, physical_cores=physical, logical_cores=logical)


def _disk(path: Path) -> tuple[int, int]:
    usage = psutil.disk_usage(str(nearest_existing(path)))
    return usage.total, usage.free


async def disk_usage(path: Path) -> tuple[int, int]:
    """(total, free) bytes of the filesystem that holds `path` (or its nearest existing parent)."""
    return await asyncio.to_thread(_disk, path)


async def probe_host(work_dir: Path) -> HostInfo:
    cpu, memory, (total, free) = await asyncio.gather(
        asyncio.to_thread(_cpu),
        asyncio.to_thread(lambda: psutil.virtual_memory().total),
        disk_usage(work_dir),
    )
    return HostInfo(
        hostname=socket.gethostname(),
        cpu=cpu,
        memory_total_bytes=memory,
        disk_total_bytes=total,
        disk_free_bytes=free,
    )
