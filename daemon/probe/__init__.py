"""Probe and advertise: what this node has, which encoders really work, and its slots per pool."""

from daemon.probe.candidates import Candidate, Plan, candidate_for, plan
from daemon.probe.capacity import plan_slots, pools_served
from daemon.probe.dri import RenderNode, render_nodes
from daemon.probe.ffmpeg_caps import probe_ffmpeg
from daemon.probe.gpu import Nvml, gpu_loads, probe_gpus
from daemon.probe.host import disk_usage, probe_host
from daemon.probe.node import capabilities_changed, probe_node
from daemon.probe.run import ProbeError
from daemon.probe.verify import reverify, verify_encoders, verify_one

__all__ = [
    "Candidate",
    "Nvml",
    "Plan",
    "ProbeError",
    "RenderNode",
    "candidate_for",
    "capabilities_changed",
    "disk_usage",
    "gpu_loads",
    "plan",
    "plan_slots",
    "pools_served",
    "probe_ffmpeg",
    "probe_gpus",
    "probe_host",
    "probe_node",
    "render_nodes",
    "reverify",
    "verify_encoders",
    "verify_one",
]
