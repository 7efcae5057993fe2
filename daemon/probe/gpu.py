"""NVIDIA GPUs through NVML: a session kept open for cheap heartbeat loads, and the full probe.

Every NVML call runs in a worker thread under a deadline, because a wedged driver can block a
call for minutes; where no driver or library exists the answer is "no GPUs" plus a note.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

from daemon.probe.nvml_device import Guard, describe, device_info, device_load
from schemas.nodes import GpuInfo, GpuLoad

#: For every ffmpeg run: CUDA numbers GPUs fastest first by default, NVML by PCI bus; with this,
#: `-gpu N` and `-hwaccel_device N` name the GPU NVML calls N.
CUDA_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
#: Deadline for one round of NVML calls (init, a probe, a heartbeat's loads).
NVML_TIMEOUT = 10.0


def _open() -> tuple[Any, list[tuple[int, Any]], str, list[str]]:
    try:
        nv = importlib.import_module("pynvml")
    except ImportError as exc:
        raise RuntimeError("nvidia-ml-py is not installed") from exc
    nv.nvmlInit()  # raises NVMLError_LibraryNotFound / DriverNotLoaded on a box without NVIDIA
    try:
        g = Guard(nv)
        driver = g("driver version", "nvmlSystemGetDriverVersion")
        count = int(nv.nvmlDeviceGetCount())
        handles = [(i, g(f"GPU {i} handle", "nvmlDeviceGetHandleByIndex", i)) for i in range(count)]
    except Exception:
        nv.nvmlShutdown()
        raise
    live = [(i, h) for i, h in handles if h is not None]
    return nv, live, str(driver) if driver is not None else "unknown", g.notes


class Nvml:
    """An NVML session. `open()` never raises: without NVML it is simply unavailable."""

    def __init__(
        self, nv: Any, handles: list[tuple[int, Any]], driver: str, notes: list[str]
    ) -> None:
        self._nv = nv
        self._handles = handles
        self._driver = driver
        self.notes = notes
        # Per GPU: loads NVML answered NotSupported, skipped on later heartbeats.
        self._skip: dict[int, set[str]] = {i: set() for i, _ in handles}
        self._latest: list[GpuLoad] = []

    @classmethod
    async def open(cls, within: float = NVML_TIMEOUT) -> Nvml:
        try:
            nv, handles, driver, notes = await asyncio.wait_for(asyncio.to_thread(_open), within)
        except TimeoutError:
            return cls(None, [], "", [f"NVML unavailable: no answer within {within:g}s"])
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, NoPermission...
            return cls(None, [], "", [f"NVML unavailable: {describe(exc)}"])
        if not handles:
            notes = [*notes, "NVML found no GPUs"]
        return cls(nv, handles, driver, notes)

    @property
    def available(self) -> bool:
        return self._nv is not None

    async def probe(self, within: float = NVML_TIMEOUT) -> tuple[list[GpuInfo], list[str]]:
        """Every GPU in full, with the session's notes (why there are none, when there are none)."""
        if self._nv is None:
            return [], list(self.notes)
        nv, driver = self._nv, self._driver

        def collect() -> list[GpuInfo]:
            return [device_info(nv, i, h, driver) for i, h in self._handles]

        try:
            return await asyncio.wait_for(asyncio.to_thread(collect), within), list(self.notes)
        except TimeoutError:
            return [], [*self.notes, f"NVML probe gave no answer within {within:g}s"]

    async def loads(self, within: float = NVML_TIMEOUT) -> list[GpuLoad]:
        """Load per GPU for a heartbeat; [] without NVML or when NVML does not answer in time."""
        if self._nv is None:
            return []
        nv = self._nv

        def collect() -> list[GpuLoad]:
            return [device_load(Guard(nv, self._skip[i]), i, h) for i, h in self._handles]

        try:
            self._latest = await asyncio.wait_for(asyncio.to_thread(collect), within)
        except TimeoutError:
            self._latest = []
        return self._latest

    def last_loads(self) -> list[GpuLoad]:
        """The latest `loads()` answer, for synchronous readers (a heartbeat builder, metrics)."""
        return self._latest

    async def close(self, within: float = NVML_TIMEOUT) -> None:
        """Shut NVML down; idempotent, and quiet about a driver that is already gone."""
        nv, self._nv, self._handles = self._nv, None, []
        if nv is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(nv.nvmlShutdown), within)
        except Exception as exc:
            self.notes.append(f"NVML shutdown: {describe(exc)}")


async def probe_gpus(nvml: Nvml | None = None) -> tuple[list[GpuInfo], list[str]]:
    """GPUs and notes, through `nvml` when given (left open), else through a session of its own."""
    if nvml is not None:
        return await nvml.probe()
    own = await Nvml.open()
    try:
        return await own.probe()
    finally:
        await own.close()


async def gpu_loads(nvml: Nvml | None) -> list[GpuLoad]:
    """A heartbeat's GPU loads through the daemon's open session; [] without one."""
    return await nvml.loads() if nvml is not None else []
