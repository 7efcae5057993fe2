"""Can any online node run this job? The pure check behind the API's submit-time rejection.

Processing windows are left out on purpose: a node outside its window for the job's class still
fits (the job waits queued until a window opens, daemon.pull.windows)."""

from __future__ import annotations

from collections.abc import Iterable

from control.nodes import FleetNode
from schemas.encoderneeds import encoder_needs, unmet_filter
from schemas.jobs import JobSpec


def encoders_for(job: JobSpec) -> tuple[str, ...] | None:
    """Encoders any one of which can run the job's first need (its video, else its audio)."""
    needs = encoder_needs(job)
    return needs[0][1] if needs else None


def why_not(job: JobSpec, node: FleetNode) -> str | None:
    """The reason this node cannot run the job, or None when it can."""
    caps, hb = node.capabilities, node.heartbeat
    if node.state != "online":
        return f"{caps.node_id} is {node.state}"
    if job.pool not in caps.pools:
        return f"{caps.node_id} does not serve pool {job.pool!r}"
    have = set(caps.verified_encoders) - set(hb.withdrawn_encoders)
    for _, wanted in encoder_needs(job):  # codec and family: av1_nvenc, not any NVENC
        if not have.intersection(wanted):
            return f"{caps.node_id} has none of the encoders {', '.join(wanted)}"
    if (missing := unmet_filter(job, frozenset(caps.verified_filters))) is not None:
        return f"{caps.node_id}: {missing}"
    need_mb = job.requirements.min_gpu_memory_mb
    if need_mb and not any(g.memory_total_bytes >= need_mb * 1024 * 1024 for g in caps.gpus):
        return f"{caps.node_id} has no GPU with {need_mb} MiB"
    for key, value in job.requirements.labels.items():
        if caps.labels.get(key) != value:
            return f"{caps.node_id} lacks label {key}={value}"
    return None


def rejection(job: JobSpec, nodes: Iterable[FleetNode]) -> str | None:
    """None when some node fits; otherwise one line naming why each node does not."""
    reasons: list[str] = []
    for node in nodes:
        reason = why_not(job, node)
        if reason is None:
            return None
        reasons.append(reason)
    if not reasons:
        return f"no online node serves pool {job.pool!r} (the fleet is empty)"
    return f"no online node can run this job: {'; '.join(reasons)}"[:1000]
