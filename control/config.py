"""The control plane's configuration (`/etc/flotilla/control.toml`), typed and strict."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from common.configfile import load_config
from common.natsconn import NatsSettings
from control.topology import TopologySettings

DEFAULT_PATH = Path("/etc/flotilla/control.toml")
ENV_PREFIX = "FLOTILLA_CONTROL_"
Positive = Annotated[float, msgspec.Meta(gt=0)]
#: A host as a URL names it: a DNS name or an IP address (IPv6 without brackets), no port.
PoolName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
HostName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:-]{1,253}$")]


class AlertThresholds(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Seconds without a heartbeat after which a node counts as offline.
    node_offline_after: Positive = 30.0
    #: Seconds a node whose bucket entry is gone (it stopped, or expired) stays listed as offline,
    #: and alerting, before the control plane forgets it.
    node_forget_after: Positive = 86400.0
    #: Pools that must always have an online node: `pool_offline` (critical) fires for one that
    #: has none, even with an empty queue. Unset: every pool of `topology.pools`; `[]`: none.
    required_pools: list[PoolName] | None = None
    #: Alert `queue_depth` when more jobs than this wait in one pool.
    queue_depth: Annotated[int, msgspec.Meta(ge=1)] = 100
    #: Alert `oldest_wait` when a pool's oldest waiting job is older than this.
    oldest_wait_seconds: Positive = 600.0
    #: Alert `failure_rate` when this fraction of jobs finished in the window failed.
    failure_rate: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.2
    #: No `failure_rate` alert with fewer finished jobs than this in the window.
    failure_rate_min_jobs: Annotated[int, msgspec.Meta(ge=1)] = 10
    #: Seconds of finished jobs the failure rate looks at.
    failure_rate_window: Positive = 900.0
    #: Alert `node_disk` when a node's work disk is fuller than this.
    disk_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] = 90.0
    #: Alert `node_memory` when a node's memory use is above this.
    memory_percent: Annotated[float, msgspec.Meta(gt=0, le=100)] = 95.0
    #: Alert `gpu_temperature` when a GPU is hotter than this (°C).
    gpu_temperature_c: Positive = 85.0
    #: Alert `stuck_job` when a running job sent no progress for this long.
    stuck_job_seconds: Positive = 900.0
    #: Alert `ingest_lag` when event ingest is this many seconds behind.
    ingest_lag_seconds: Positive = 60.0
    #: Alert `rejected_events` for a node while an event of it was rejected within this many
    #: seconds (it reported on a job attempt that another node holds).
    rejected_events_window: Positive = 900.0
    #: A condition must hold (or clear) for this many evaluations before firing (or resolving).
    hysteresis: Annotated[int, msgspec.Meta(ge=1)] = 2


class WebhookSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Host names (exact, any case) job callbacks may reach even when they resolve to private,
    #: loopback or link-local addresses, on any port; every other host must resolve to public
    #: addresses only. Each one is trusted as much as the control plane's own network.
    allow_hosts: list[HostName] = []
    #: File holding the fleet webhook secret (at least 32 characters), which signs callbacks of
    #: tenants without their own; unset: one is generated once and kept in Postgres.
    secret_file: str | None = None
    #: Seconds one delivery attempt may take in all (resolve, connect, send, status line).
    timeout: Positive = 10.0
    #: Attempts per callback before it is given up.
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 6
    #: Seconds before the second attempt; doubles with each further one.
    backoff: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    #: Seconds between looks for finished jobs and due retries.
    interval: Positive = 2.0


class ControlConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: How to reach NATS (same keys as the daemon's `[nats]`).
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    #: Postgres DSN; migrations run at start-up.
    database_url: str = "postgresql://flotilla@127.0.0.1:5432/flotilla"
    #: JetStream streams, consumers and node bucket (`flotilla nats init` applies them).
    topology: TopologySettings = msgspec.field(default_factory=TopologySettings)
    #: Events fetched and folded into Postgres per transaction, at most.
    ingest_batch: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    #: Seconds one ingest fetch waits for events.
    ingest_fetch_timeout: Positive = 1.0
    #: Job events older than this are deleted from Postgres (job rows follow
    #: `job_retention_days`).
    event_retention_days: Positive = 30.0
    #: Finished jobs (completed, failed, cancelled) are deleted, with their attempts, events and
    #: webhook delivery, this many days after they finished; unfinished jobs are never deleted.
    job_retention_days: Positive = 90.0
    #: The same for the canary tenant's jobs, which only feed the `canary_failed` alert; must
    #: outlast `canary_timeout` + `canary_interval`.
    canary_retention_days: Positive = 1.0
    #: Rejected events (`rejected_events` table) older than this are deleted.
    rejected_event_retention_days: Positive = 30.0
    #: Webhook deliveries that ended (delivered or given up) this long ago are deleted; at least
    #: 1, since a job that finished within the last day with no delivery row gets a webhook.
    webhook_retention_days: Annotated[float, msgspec.Meta(ge=1)] = 30.0
    #: Dead letters that were re-submitted (`flotilla jobs retry`) this long ago are deleted.
    dead_letter_retention_days: Positive = 30.0
    #: Seconds between retention runs (pruning rows and the media sweep).
    prune_interval: Positive = 3600.0
    #: Rows deleted per retention transaction.
    prune_batch: Annotated[int, msgspec.Meta(ge=1)] = 5000
    #: Seconds an object store chunk set no object references (left by an overwrite, a delete
    #: or an abandoned upload) is kept before the leader's media sweep purges it; must exceed the
    #: longest pause inside one upload and the longest read of a superseded object.
    media_orphan_grace: Positive = 3600.0
    #: Seconds between the leader's looks for job messages no consumer can deliver (a wildcard
    #: character as a subject token), which it moves to the dead letters.
    stray_sweep_interval: Positive = 60.0
    #: Seconds between the leader's sweeps over unfinished workflows (a step job's end and a new
    #: workflow trigger one at once; the sweep is what a new leader or a lost trigger relies on).
    workflow_sweep_interval: Positive = 5.0
    #: Port of /metrics, /healthz and /readyz; 0 picks a free port.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9465
    #: Address the metrics server binds.
    metrics_host: str = "127.0.0.1"
    #: Seconds between fleet snapshots: metrics refresh and alert rules run.
    alert_interval: Positive = 10.0
    #: Alert thresholds of the built-in rule engine.
    alerts: AlertThresholds = msgspec.field(default_factory=AlertThresholds)
    #: Seconds between canary jobs, one per pool with online nodes.
    canary_interval: Positive = 60.0
    #: A canary that fails or is not done within this many seconds fires `canary_failed`.
    canary_timeout: Positive = 60.0
    #: Seconds a leader lease lasts unrenewed; one instance (the leader) runs alerts, canaries and
    #: retention, and another takes over within about this long after it dies.
    leader_lease_ttl: Annotated[float, msgspec.Meta(ge=1)] = 15.0
    #: This instance's name in the leader lease; empty: host name and process id.
    instance_id: str = ""
    #: Job-end callbacks (`callback_url`): where they may go, how they are signed and retried.
    webhooks: WebhookSettings = msgspec.field(default_factory=WebhookSettings)
    #: A submitted job whose deadline looks infeasible (docs/deadlines.md): `refuse` it, or
    #: `warn` (admit it with a warning in the reply). A deadline already past is always refused.
    deadline_policy: Literal["refuse", "warn"] = "refuse"
    #: Jobs with a deadline are released earliest deadline first into their tier's due lane,
    #: which the leader keeps filled to the pool's free slots plus this many (docs/deadlines.md):
    #: more hides the release's tick from a freed slot, fewer keeps the order tighter.
    deadline_release_margin: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 2
    #: API keys are required on every API request when true (set it in production); when false,
    #: a request without a key acts as the operator (the dev fleet, the demo).
    require_api_keys: bool = False
    #: JSON log lines (on stderr); unset: JSON under systemd or when stderr is not a terminal.
    log_json: bool | None = None

    def __post_init__(self) -> None:
        # A canary deleted before the runner reads its outcome would count as failed.
        if self.canary_retention_days * 86400 <= self.canary_timeout + self.canary_interval:
            msg = "canary_retention_days must outlast canary_timeout + canary_interval"
            raise ValueError(msg)


def load_control_config(path: Path | None, *, required: bool = False) -> ControlConfig:
    return load_config(ControlConfig, path, env_prefix=ENV_PREFIX, required=required)
