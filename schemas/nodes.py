"""What a node says about itself: capabilities (on change) and heartbeats (on an interval)."""

from __future__ import annotations

from typing import Literal

from schemas.common import Labels, NodeId, NonNegFloat, NonNegInt, Percent, Report, ReportPart
from schemas.windows import WindowInForce

NodeState = Literal["online", "draining", "offline"]


class CpuInfo(ReportPart, kw_only=True):
    model: str
    physical_cores: NonNegInt
    logical_cores: NonNegInt


class GpuInfo(ReportPart, kw_only=True):
    index: NonNegInt
    name: str
    uuid: str
    memory_total_bytes: NonNegInt
    driver_version: str
    #: NVENC / NVDEC engines as NVML reports them (an H200 has NVDEC but no NVENC).
    nvenc: bool
    nvdec: bool
    #: Concurrent NVENC sessions this GPU takes: configured, or probed by opening sessions
    #: until the driver refuses one (None: unknown, a default applies).
    encoder_session_limit: NonNegInt | None = None
    encoder_codecs: list[str] = []
    decoder_codecs: list[str] = []
    utilization_percent: Percent | None = None
    encoder_utilization_percent: Percent | None = None
    temperature_c: float | None = None
    notes: list[str] = []
    #: NVENC encoders whose test encode passed pinned to this GPU (`-gpu index`).
    verified_encoders: list[str] = []


class FfmpegInfo(ReportPart, kw_only=True):
    path: str
    version: str
    encoders: list[str] = []
    hwaccels: list[str] = []
    filters: list[str] = []


class DroppedEncoder(ReportPart, kw_only=True):
    name: str
    reason: str


class NodeCapabilities(Report, kw_only=True):
    node_id: NodeId
    hostname: str
    daemon_version: str
    #: schemas.common.PROTOCOL of the node's release (1 for nodes older than the field).
    protocol: NonNegInt = 1
    cpu: CpuInfo
    memory_total_bytes: NonNegInt
    disk_total_bytes: NonNegInt
    disk_free_bytes: NonNegInt
    gpus: list[GpuInfo] = []
    gpu_notes: list[str] = []
    dri_render_nodes: list[str] = []
    #: QSV/VAAPI encoders whose test encode passed on each render node, by node path.
    render_node_encoders: dict[str, list[str]] = {}
    ffmpeg: FfmpegInfo
    #: Hardware and software encoders that passed a test encode on this node.
    verified_encoders: list[str] = []
    dropped_encoders: list[DroppedEncoder] = []
    #: ffmpeg filters a job may need that passed a test run here (`subtitles`: libass drew a
    #: cue, so burn-in works); absent from older nodes, which cannot burn in.
    verified_filters: list[str] = []
    hwaccels: list[str] = []
    pools: list[str] = []
    slots: dict[str, NonNegInt] = {}
    labels: Labels = {}


class GpuLoad(ReportPart, kw_only=True):
    index: NonNegInt
    utilization_percent: Percent | None = None
    encoder_utilization_percent: Percent | None = None
    decoder_utilization_percent: Percent | None = None
    memory_used_bytes: NonNegInt | None = None
    temperature_c: float | None = None


class Heartbeat(Report, kw_only=True):
    node_id: NodeId
    ts: float
    state: NodeState = "online"
    load1: NonNegFloat = 0.0
    cpu_percent: Percent = 0.0
    memory_percent: Percent = 0.0
    disk_free_bytes: NonNegInt = 0
    disk_low: bool = False
    slots: dict[str, NonNegInt] = {}
    free_slots: dict[str, NonNegInt] = {}
    running_jobs: list[str] = []
    #: The tenant of each of running_jobs, in the same order (absent from older nodes).
    running_tenants: list[str] = []
    gpus: list[GpuLoad] = []
    withdrawn_encoders: list[str] = []
    outbox_depth: NonNegInt = 0
    #: Processing windows in force (absent from older nodes and nodes with none).
    windows: list[WindowInForce] = []
    #: Where they come from: `config` (the file) or `runtime` (`node.windows`, kept across
    #: restarts until reset).
    windows_source: str = "config"
    #: Priorities each served pool pulls now (a window may hold the others back); empty from
    #: older nodes.
    open_tiers: dict[str, list[str]] = {}
    #: Seconds between this node's heartbeats (0: an older node, which does not say). The
    #: control plane warns when two of them do not fit in its `node_offline_after`.
    interval_s: NonNegFloat = 0.0


class NodeRecord(Report, kw_only=True):
    """The node KV bucket's value: capabilities plus the latest heartbeat."""

    capabilities: NodeCapabilities
    heartbeat: Heartbeat
