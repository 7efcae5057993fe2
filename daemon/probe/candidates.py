"""Which encoders to test, and how: the pure plan behind "verify before advertising".

Hardware encoders are tried only where the hardware suggests them: NVENC when NVML shows any
NVIDIA GPU (a GPU without NVENC engines, like the H200, is still tried, so that the drop carries
ffmpeg's own reason), QSV and VAAPI when a render node whose driver can carry them exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from daemon.probe.dri import RenderNode, nodes_for
from schemas.nodes import DroppedEncoder, GpuInfo

Family = Literal["software", "nvenc", "qsv", "vaapi"]
_HW: dict[str, Family] = {"nvenc": "nvenc", "qsv": "qsv", "vaapi": "vaapi"}
HW_FAMILIES: tuple[Family, ...] = tuple(_HW.values())
#: Software encoders Flotilla's operations use; a build may list one that does not work.
SOFTWARE_ENCODERS = (
    "libx264",
    "libx265",
    "libsvtav1",
    "libaom-av1",
    "libvpx-vp9",
    "aac",
    "libopus",
    "libmp3lame",
)
AUDIO_ENCODERS = frozenset({"aac", "libopus", "libmp3lame"})
#: Video codecs of `schemas.operations.VideoCodec`: hardware encoders for others are ignored.
HW_CODECS = ("h264", "hevc", "av1", "vp9")

NO_NVENC_GPU = "no NVIDIA GPU with an NVENC engine"
NOT_IN_BUILD = "not in this ffmpeg build"


@dataclass(frozen=True)
class Candidate:
    name: str
    family: Family
    #: Render node for QSV/VAAPI; None otherwise.
    device: str | None = None
    #: NVML index of the GPU an NVENC test encode is pinned to (`-gpu`); None: the driver's pick.
    gpu: int | None = None

    @property
    def audio(self) -> bool:
        return self.name in AUDIO_ENCODERS


@dataclass(frozen=True)
class Plan:
    test: list[Candidate]
    #: Hardware encoders advertised without a test encode (only when verification is off).
    accept: list[str]
    dropped: list[DroppedEncoder]


def family_of(name: str) -> Family | None:
    """`h264_nvenc` -> nvenc, `libx264` -> software; None for encoders Flotilla does not use."""
    if name in SOFTWARE_ENCODERS:
        return "software"
    codec, _, suffix = name.rpartition("_")
    return _HW.get(suffix) if codec in HW_CODECS else None


def _no_node_reason(family: str, nodes: Sequence[RenderNode]) -> str:
    if not nodes:
        return "no render node"
    drivers = ", ".join(sorted({node.driver or "unknown" for node in nodes}))
    return f"no render node with a {family} driver (drivers: {drivers})"


def candidate_for(
    name: str, gpus: Sequence[GpuInfo], nodes: Sequence[RenderNode]
) -> Candidate | str:
    """How to test `name` on this hardware, or why it cannot be tried here at all."""
    family = family_of(name)
    if family is None:
        return "not an encoder Flotilla uses"
    if family == "software":
        return Candidate(name, family)
    found = candidates_for(name, gpus, nodes)
    return found[0] if isinstance(found, list) else found


def candidates_for(
    name: str, gpus: Sequence[GpuInfo], nodes: Sequence[RenderNode]
) -> list[Candidate] | str:
    """One test per device that could carry `name` (each GPU, each render node), or why none."""
    family = family_of(name)
    if family is None:
        return "not an encoder Flotilla uses"
    if family == "software":
        return [Candidate(name, family)]
    if family == "nvenc":
        return [Candidate(name, family, gpu=g.index) for g in gpus] if gpus else NO_NVENC_GPU
    usable = nodes_for(list(nodes), family)
    if not usable:
        return _no_node_reason(family, nodes)
    return [Candidate(name, family, node.path) for node in usable]


def _hardware_suggests(cand: Candidate, gpus: Sequence[GpuInfo]) -> bool:
    """Without test encodes, NVENC needs NVML to report the engine for that codec."""
    if cand.family != "nvenc":
        return True
    codec = cand.name.removesuffix("_nvenc")
    return any(gpu.nvenc and codec in gpu.encoder_codecs for gpu in gpus)


def plan(
    build: Sequence[str],
    gpus: Sequence[GpuInfo],
    nodes: Sequence[RenderNode],
    *,
    verify_hw: bool = True,
) -> Plan:
    """Split the build's encoders into those to test, to accept untested, and to drop now."""
    offered = set(build)
    test: list[Candidate] = []
    accept: list[str] = []
    dropped = [
        DroppedEncoder(name=n, reason=NOT_IN_BUILD) for n in SOFTWARE_ENCODERS if n not in offered
    ]
    wanted = [n for n in SOFTWARE_ENCODERS if n in offered]
    wanted += [n for n in build if family_of(n) in HW_FAMILIES]
    for name in wanted:
        found = candidates_for(name, gpus, nodes)
        if isinstance(found, str):
            dropped.append(DroppedEncoder(name=name, reason=found))
        elif verify_hw or found[0].family == "software":
            test += found
        elif _hardware_suggests(found[0], gpus):
            accept.append(name)
        else:
            dropped.append(DroppedEncoder(name=name, reason=NO_NVENC_GPU))
    return Plan(test=test, accept=accept, dropped=dropped)
