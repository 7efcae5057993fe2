"""The node's encode devices and the sessions each one has free: which GPU or render node a
hardware encode runs on.

A job's pool slot says it may run; its placement says where. Each NVENC GPU takes as many
concurrent sessions as its cap (configured or probed, and bounded by its memory), each VAAPI/QSV
render node `DEFAULT_RENDER_NODE_SLOTS`; every encoder in a run takes one session, so a ladder
of N rungs takes N on one GPU (one decode feeds them all there). A placement goes to the device
with the most sessions free that verified every encoder the run needs; decode, scaling and
encode are then pinned to it (`-hwaccel_device`, `-gpu`, its render node).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from dataclasses import dataclass

from daemon.errors import JobError
from daemon.probe.capacity import DEFAULT_RENDER_NODE_SLOTS, gpu_slots
from schemas.nodes import NodeCapabilities

HW_FAMILIES = ("nvenc", "qsv", "vaapi")


@dataclass(frozen=True, slots=True)
class Device:
    family: str
    #: NVML index for an NVENC GPU; the position among render nodes for VAAPI/QSV.
    index: int
    #: Render node for VAAPI/QSV; None for NVENC.
    path: str | None
    sessions: int
    encoders: frozenset[str]


@dataclass(frozen=True, slots=True)
class Placement:
    device: Device
    sessions: int

    @property
    def gpu(self) -> int | None:
        return self.device.index if self.device.family == "nvenc" else None


def devices_of(caps: NodeCapabilities, gpu_memory_per_job_mb: int) -> list[Device]:
    """Every device that verified a hardware encoder, with its session capacity."""
    found = []
    # Encoders tested per GPU where the node did so; else (verification off, an older record)
    # every GPU NVML says has NVENC carries the node's NVENC encoders.
    tested = any(gpu.verified_encoders for gpu in caps.gpus)
    node_wide = frozenset(n for n in caps.verified_encoders if n.endswith("_nvenc"))
    for gpu in caps.gpus:
        n = gpu_slots(gpu, gpu_memory_per_job_mb, tested=tested)
        mine = frozenset(gpu.verified_encoders) if tested else node_wide
        if n > 0:
            found.append(Device("nvenc", gpu.index, None, n, mine))
    for i, (path, names) in enumerate(sorted(caps.render_node_encoders.items())):
        for family in ("qsv", "vaapi"):
            ours = frozenset(n for n in names if n.endswith(f"_{family}"))
            if ours:
                found.append(Device(family, i, path, DEFAULT_RENDER_NODE_SLOTS, ours))
    return found


class DeviceLedger:
    """Sessions in use per device. `place` is synchronous and never waits: a run that finds no
    device with room goes down its encoder chain (software) instead of queueing behind a GPU."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self.devices = list(devices)
        self._used = {d: 0 for d in self.devices}

    def free(self, device: Device) -> int:
        return device.sessions - self._used[device]

    def manages(self, family: str) -> bool:
        return any(d.family == family for d in self.devices)

    def capacity(self, family: str) -> int:
        return sum(d.sessions for d in self.devices if d.family == family)

    def place(self, family: str, encoders: AbstractSet[str], sessions: int) -> Placement | None:
        """Take `sessions` on the device of `family` with the most free that verified all of
        `encoders`; None when none has room (or none verified them)."""
        fits = [
            d
            for d in self.devices
            if d.family == family and encoders <= d.encoders and self.free(d) >= sessions
        ]
        if not fits:
            return None
        best = max(fits, key=lambda d: (self.free(d), -d.index))
        self._used[best] += sessions
        return Placement(best, sessions)

    def release(self, placement: Placement) -> None:
        used = self._used[placement.device] - placement.sessions
        if used < 0:
            raise RuntimeError(f"released more sessions than held on {placement.device}")
        self._used[placement.device] = used


class NoDevice(JobError):
    """No device of the family has the sessions free now: not the encoder's fault (encoder
    health does not count it); the chain goes on to the next encoder, else the attempt retries."""


@contextmanager
def placed(
    ledger: DeviceLedger | None, family: str, encoders: AbstractSet[str], sessions: int = 1
) -> Iterator[Placement | None]:
    """Hold a placement for a hardware run; None for software, without a ledger, or for a
    family the ledger knows no device of (encoders accepted untested): the driver's default
    device then. Raises NoDevice when the family's devices have no room."""
    if ledger is None or family not in HW_FAMILIES or not ledger.manages(family):
        yield None
        return
    placement = ledger.place(family, encoders, sessions)
    if placement is None:
        raise NoDevice(f"no {family} device has {sessions} free session(s) for "
                       f"{', '.join(sorted(encoders))}")  # fmt: skip
    try:
        yield placement
    finally:
        ledger.release(placement)
