"""The control plane's configuration (`/etc/flotilla/control.toml`), typed and strict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec

from control.topology import TopologySettings
from daemon.config import NatsSettings
from daemon.configfile import load_config

DEFAULT_PATH = Path("/etc/flotilla/control.toml")
ENV_PREFIX = "FLOTILLA_CONTROL_"
Positive = Annotated[float, msgspec.Meta(gt=0)]


class AlertThresholds(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    node_offline_after: Positive = 30.0
    queue_depth: Annotated[int, msgspec.Meta(ge=1)] = 100
    oldest_wait_seconds: Positive = 600.0
    failure_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    failure_rate_min_jobs: Annotated[int, msgspec.Meta(ge=1)] = 10
    failure_rate_window: Positive = 900.0
    disk_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] = 90.0
    memory_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] = 95.0
    gpu_temperature_c: Positive = 85.0
    stuck_job_seconds: Positive = 900.0
    ingest_lag_seconds: Positive = 60.0
    #: A condition must hold (or clear) for this many evaluations before firing (or resolving).
    hysteresis: Annotated[int, msgspec.Meta(ge=1)] = 2


class ControlConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    database_url: str = "postgresql://flotilla@127.0.0.1:5432/flotilla"
    topology: TopologySettings = msgspec.field(default_factory=TopologySettings)
    ingest_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    ingest_fetch_timeout: Positive = 1.0
    event_retention_days: Positive = 30.0
    prune_interval: Positive = 3600.0
    prune_batch: Annotated[int, msgspec.Meta(ge=1)] = 5000
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9465
    metrics_host: str = "127.0.0.1"
    snapshot_interval: Positive = 5.0
    alert_interval: Positive = 10.0
    alerts: AlertThresholds = msgspec.field(default_factory=AlertThresholds)
    canary_interval: Positive = 60.0
    canary_timeout: Positive = 60.0
    #: API keys are required on every API request when true.
    require_api_keys: bool = False
    log_json: bool | None = None


def load_control_config(path: Path | None, *, required: bool = False) -> ControlConfig:
    return load_config(ControlConfig, path, env_prefix=ENV_PREFIX, required=required)
