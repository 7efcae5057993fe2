"""The whole probe: host, GPUs, render nodes and ffmpeg gathered at once, then verified, sized."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from daemon.config import DaemonConfig
from daemon.ffmpeg.tools import FfmpegTools
from daemon.probe.candidates import plan
from daemon.probe.capacity import plan_slots, pools_served
from daemon.probe.dri import RenderNode, nodes_for, render_nodes
from daemon.probe.ffmpeg_caps import BURN_IN, probe_ffmpeg, verify_burn_in
from daemon.probe.gpu import Nvml, probe_gpus
from daemon.probe.host import probe_host
from daemon.probe.sessions import probe_session_limit
from daemon.probe.verify import per_device, summarize, verify_each
from schemas.common import PROTOCOL
from schemas.nodes import GpuInfo, NodeCapabilities

log = logging.getLogger("flotilla.probe")


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
    outcomes, no_burn = await asyncio.gather(
        verify_each(ffmpeg, todo.test), verify_burn_in(ffmpeg, info.filters)
    )
    if no_burn is not None and BURN_IN in info.filters:
        log.warning("burning subtitles in is off on this node: %s", no_burn)
    verified, failed = summarize(outcomes)
    verified += todo.accept
    on_gpu, on_node = per_device(outcomes)
    # One GPU at a time: each session probe starts up to `nvenc_session_probe` ffmpeg processes.
    gpus = [await _sized(cfg, ffmpeg, g, on_gpu.get(g.index, [])) for g in gpus]
    pools = pools_served(verified, cfg.pools, cfg.pool_classes)
    slots = plan_slots(
        pools,
        cfg.slots,
        logical_cores=host.cpu.logical_cores,
        threads_per_job=cfg.threads_per_job,
        gpus=gpus,
        gpu_memory_per_job_mb=cfg.gpu_memory_per_job_mb,
        render_nodes={family: _render_nodes(family, nodes, on_node) for family in ("qsv", "vaapi")},
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
        render_node_encoders=on_node,
        ffmpeg=info,
        verified_encoders=verified,
        dropped_encoders=sorted([*todo.dropped, *failed], key=lambda d: d.name),
        verified_filters=[BURN_IN] if no_burn is None else [],
        hwaccels=info.hwaccels,
        pools=[pool for pool in pools if pool in slots],
        slots=slots,
        labels=dict(cfg.labels),
    )


def _render_nodes(family: str, nodes: list[RenderNode], passed: dict[str, list[str]]) -> int:
    """Render nodes that carry `family`: those where its test encode passed, when any was run."""
    tested = sum(1 for names in passed.values() if any(n.endswith(f"_{family}") for n in names))
    return tested or len(nodes_for(nodes, family))


async def _sized(cfg: DaemonConfig, ffmpeg: str, gpu: GpuInfo, verified: list[str]) -> GpuInfo:
    """`gpu` with the NVENC encoders that passed on it and its session cap: configured, else
    probed by opening sessions (GPUs without a working NVENC are not probed)."""
    limit, notes = gpu.encoder_session_limit, list(gpu.notes)
    if cfg.nvenc_sessions_per_gpu is not None:
        limit = cfg.nvenc_sessions_per_gpu
        notes.append(f"sessions: {limit} (configured)")
    elif verified and cfg.nvenc_session_probe > 0:
        limit, how = await probe_session_limit(
            ffmpeg, gpu.index, cfg.nvenc_session_probe, encoder=verified[0]
        )
        notes.append(f"sessions: {how}")
    return msgspec.structs.replace(
        gpu, verified_encoders=verified, encoder_session_limit=limit, notes=notes
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
