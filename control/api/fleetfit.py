"""Can any online node run this job? The pure check behind the API's submit-time rejection."""

from __future__ import annotations

from collections.abc import Iterable

from control.nodes import FleetNode
from schemas.jobs import JobSpec
from schemas.operations import Transcode
from schemas.videoopts import chroma_420

#: Software encoders per codec; hardware ones are named `<codec>_<family>` by ffmpeg.
SOFTWARE_ENCODERS: dict[str, tuple[str, ...]] = {
    "h264": ("libx264",),
    "hevc": ("libx265",),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "vp9": ("libvpx-vp9",),
}


AUDIO_ENCODERS = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}


def encoders_for(job: JobSpec) -> tuple[str, ...] | None:
    """Encoders any one of which can run the job; None when the job needs no encoder."""
    op = job.operation
    if not isinstance(op, Transcode):
        return None
    codec = op.video_codec
    if codec == "none":  # audio only: the audio encoder, none for a stream copy
        audio = AUDIO_ENCODERS.get(op.settled_audio)
        return (audio,) if audio is not None else None
    accel = job.requirements.accel
    if accel in ("nvenc", "qsv", "vaapi"):
        return (f"{codec}_{accel}",)
    soft = SOFTWARE_ENCODERS[codec]
    if accel == "software" or (op.pix_fmt is not None and not chroma_420(op.pix_fmt)):
        return soft  # 4:2:2 and 4:4:4 are software-only
    return soft + tuple(f"{codec}_{fam}" for fam in ("nvenc", "qsv", "vaapi"))


def why_not(job: JobSpec, node: FleetNode) -> str | None:
    """The reason this node cannot run the job, or None when it can."""
    caps, hb = node.capabilities, node.heartbeat
    if node.state != "online":
        return f"{caps.node_id} is {node.state}"
    if job.pool not in caps.pools:
        return f"{caps.node_id} does not serve pool {job.pool!r}"
    wanted = encoders_for(job)
    if wanted is not None:
        have = set(caps.verified_encoders) - set(hb.withdrawn_encoders)
        if not have.intersection(wanted):
            return f"{caps.node_id} has none of the encoders {', '.join(wanted)}"
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
