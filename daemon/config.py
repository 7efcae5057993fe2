"""The daemon's configuration (`/etc/flotilla/daemon.toml`), typed and strict."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated

import msgspec

from daemon.configfile import load_config

DEFAULT_PATH = Path("/etc/flotilla/daemon.toml")
ENV_PREFIX = "FLOTILLA_DAEMON_"
Positive = Annotated[float, msgspec.Meta(gt=0)]


def _default_node_id() -> str:
    host = socket.gethostname().split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in host).strip("-_")
    return cleaned[:63] or "node"


class NatsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str = "nats://127.0.0.1:4222"
    credentials: str | None = None
    nkey_seed: str | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    prefix: str = "flotilla"
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    node_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = msgspec.field(
        default_factory=_default_node_id
    )
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    #: Journal (SQLite) and per-job scratch space.
    state_dir: str = "/var/lib/flotilla"
    #: Inputs and outputs given as file:// URIs must resolve under one of these roots.
    allowed_roots: list[str] = msgspec.field(default_factory=lambda: ["/srv/media"])
    ffmpeg: str | None = None
    ffprobe: str | None = None
    labels: dict[str, str] = {}
    #: Pools to serve; empty means every pool the probe verified.
    pools: list[str] = []
    #: Slot overrides per pool; otherwise measured from cores, GPU sessions and memory.
    slots: dict[str, Annotated[int, msgspec.Meta(ge=0, le=256)]] = {}
    threads_per_job: Annotated[int, msgspec.Meta(ge=1, le=256)] = 2
    gpu_memory_per_job_mb: Annotated[int, msgspec.Meta(ge=64)] = 1024
    verify_hw_encoders: bool = True
    heartbeat_interval: Positive = 5.0
    #: The node KV entry expires when no heartbeat came for this long.
    heartbeat_ttl: Positive = 30.0
    ack_wait: Positive = 60.0
    fetch_timeout: Positive = 5.0
    drain_deadline: Positive = 300.0
    pause_limit: Positive = 3600.0
    retry_base_delay: Positive = 5.0
    retry_max_delay: Positive = 300.0
    handback_delay: Positive = 2.0
    handback_max_delay: Positive = 30.0
    progress_interval: Positive = 1.0
    outbox_max_rows: Annotated[int, msgspec.Meta(ge=100)] = 100_000
    journal_retention_days: Positive = 7.0
    disk_low_watermark_mb: Annotated[int, msgspec.Meta(ge=0)] = 1024
    encoder_failure_threshold: Annotated[int, msgspec.Meta(ge=1)] = 3
    encoder_reverify_interval: Positive = 600.0
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    metrics_host: str = "127.0.0.1"
    log_json: bool | None = None

    @property
    def journal_path(self) -> Path:
        return Path(self.state_dir) / "journal.sqlite3"

    @property
    def work_dir(self) -> Path:
        return Path(self.state_dir) / "work"


def load_daemon_config(path: Path | None, *, required: bool = False) -> DaemonConfig:
    return load_config(DaemonConfig, path, env_prefix=ENV_PREFIX, required=required)
