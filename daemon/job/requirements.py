"""Can this node run a job? Labels, GPU memory, and an encoder for each codec the job needs in
the family its `accel` (or pool) asks for, among this node's verified encoders. What is unmet is
handed back for another node, never failed here (schemas.encoderneeds is the shared rule)."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.encoderneeds import unmet_filter, unmet_need
from schemas.jobs import HW_POOLS, JobSpec


@dataclass
class NodeView:
    """What the requirement check needs to know about this node (refreshed on probe or reload)."""

    labels: dict[str, str] = field(default_factory=dict)
    pools: list[str] = field(default_factory=list)
    verified_encoders: set[str] = field(default_factory=set)
    withdrawn_encoders: set[str] = field(default_factory=set)
    max_gpu_memory_mb: int = 0
    #: ffmpeg filters that passed a test run here (libass's `subtitles` burns subtitles in).
    filters: set[str] = field(default_factory=set)

    def usable_encoders(self) -> set[str]:
        return self.verified_encoders - self.withdrawn_encoders


def encoder_family(encoder: str) -> str:
    """`h264_nvenc` -> `nvenc`; software encoders (`libx264`) -> `software`."""
    suffix = encoder.rsplit("_", 1)[-1]
    return suffix if suffix in HW_POOLS else "software"


def unmet_requirement(spec: JobSpec, node: NodeView) -> str | None:
    """The first requirement this node cannot meet, in words; None when it can run the job."""
    req = spec.requirements
    if spec.pool not in node.pools:
        return f"node does not serve pool {spec.pool!r}"
    for key, value in sorted(req.labels.items()):
        have = node.labels.get(key)
        if have != value:
            return f"label {key}={value} required (node has {key}={have})"
    if req.min_gpu_memory_mb > node.max_gpu_memory_mb:
        return f"needs {req.min_gpu_memory_mb} MiB GPU memory (node has {node.max_gpu_memory_mb})"
    usable = node.usable_encoders()
    if req.accel in HW_POOLS and req.accel not in {encoder_family(e) for e in usable}:
        return f"no verified {req.accel} encoder on this node"
    return unmet_need(spec, frozenset(usable)) or unmet_filter(spec, frozenset(node.filters))
