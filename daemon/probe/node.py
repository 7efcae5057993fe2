"""The whole probe: host, GPUs, render nodes and ffmpeg gathered at once, then verified, sized."""

from __future__ import annotations

import asyncio

import msgspec

from daemon.config import DaemonConfig
from daemon.ffmpeg.tools import FfmpegTools
from daemon.probe.candidates import plan
from daemon.probe.capacity import plan_slots, pools_served
from daemon.probe.dri import nodes_for, render_nodes
from daemon.probe.ffmpeg_caps import probe_ffmpeg
from daemon.probe.gpu import Nvml, probe_gpus
from daemon.probe.host import probe_host
from daemon.probe.verify import verify_encoders
from schemas.common import PROTOCOL
from schemas.nodes import NodeCapabilities


async def probe_node(
    cfg: DaemonConfig,
    ffmpeg: str | FfmpegTools,
    daemon_version: str,
    *,
    nvml: Nvml | None = None,
) -> NodeCapabilities:
    """Describe this node. Raises ProbeError only when ffmpeg itself does not run.

    `nvml` is the daemon's long-lived NVML session (also used for heartbeats); without one the
    probe opens and closes its own.
    """
    if isinstance(ffmpeg, FfmpegTools):
        ffmpeg = ffmpeg.ffmpeg
    host, (gpus, gpu_notes), nodes, info = await asyncio.gather(
        probe_host(cfg.work_dir), probe_gpus(nvml), render_nodes(), probe_ffmpeg(ffmpeg)
    )
    todo = plan(info.encoders, gpus, nodes, verify_hw=cfg.verify_hw_encoders)
    verified, failed = await verify_encoders(ffmpeg, todo.test)
    verified += todo.accept
    pools = pools_served(verified, cfg.pools, cfg.pool_classes)
    slots = plan_slots(
        pools,
        cfg.slots,
        logical_cores=host.cpu.logical_cores,
        threads_per_job=cfg.threads_per_job,
        gpus=gpus,
        gpu_memory_per_job_mb=cfg.gpu_memory_per_job_mb,
        render_nodes={family: len(nodes_for(nodes, family)) for family in ("qsv", "vaapi")},
        classes=cfg.pool_classes,
    )
    return NodeCapabilities(
        node_id=cfg.node_id,
        hostname=host.hostname,
        daemon_version=daemon_version,
        protocol=PROTOCOL,
        cpu=host.cpu,
        memory_total_bytes=host.memory_total_bytes,
        disk_total_bytes=host.disk_total_bytes,
        disk_free_bytes=host.disk_free_bytes,
        gpus=gpus,
        gpu_notes=gpu_notes,
        dri_render_nodes=[node.path for node in nodes],
        ffmpeg=info,
        verified_encoders=verified,
        dropped_encoders=sorted([*todo.dropped, *failed], key=lambda d: d.name),
        hwaccels=info.hwaccels,
        pools=[pool for pool in pools if pool in slots],
        slots=slots,
        labels=dict(cfg.labels),
    )


def _stable(caps: NodeCapabilities) -> NodeCapabilities:
    """`caps` without the fields that move on their own (free disk, GPU load and temperature)."""
    gpus = [
        msgspec.structs.replace(
            gpu, utilization_percent=None, encoder_utilization_percent=None, temperature_c=None
        )
        for gpu in caps.gpus
    ]
    return msgspec.structs.replace(caps, disk_free_bytes=0, gpus=gpus)


def capabilities_changed(old: NodeCapabilities | None, new: NodeCapabilities) -> bool:
    """Whether `new` is worth publishing: anything but the volatile fields differs."""
    return old is None or _stable(old) != _stable(new)
