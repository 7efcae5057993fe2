"""Request/reply types of the control plane API on `<prefix>.api.<verb>` (a nats.micro service)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from schemas.alerts import Alert
from schemas.common import NodeId, NonNegInt, Token, Wire
from schemas.jobs import JobSpec
from schemas.nodes import Heartbeat, NodeCapabilities, NodeState
from schemas.results import JobResult
from schemas.windows import MAX_WINDOWS, WindowRule

JobState = Literal["submitted", "queued", "running", "completed", "failed", "cancelled"]
TERMINAL_STATES = frozenset({"completed", "failed", "cancelled"})
Limit = Annotated[int, msgspec.Meta(ge=1, le=1000)]


#: The request header that carries an API key (checked by the control plane's API).
KEY_HEADER = "Flotilla-Api-Key"


class ApiError(Wire, kw_only=True):
    code: Literal[400, 401, 403, 404, 409, 429, 500, 503]
    message: str


class EmptyRequest(Wire, kw_only=True):
    """The body of requests that take no arguments (node.list, fleet.summary)."""


class SubmitRequest(Wire, kw_only=True, omit_defaults=True):
    """Fields at their defaults are left out when encoded, so a control plane of the release
    before (which refuses unknown fields) still takes a request without `duration_hint_s`."""

    job: JobSpec
    #: Seconds of media the job will process, when the producer knows it (e.g. from an earlier
    #: probe): with a `deadline`, the run time is estimated from the learned realtime factor
    #: instead of the typical wall time (docs/deadlines.md). Never sent to a node.
    duration_hint_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] | None = None


class SubmitReply(Wire, kw_only=True):
    job_id: Token
    subject: str
    stream: str
    seq: NonNegInt
    duplicate: bool = False
    #: For a job with a `deadline`: when it could finish (epoch seconds), from the queue ahead
    #: and the learned run time of `estimate_runs` completed runs like it; None: no estimate.
    estimated_finish: float | None = None
    estimate_runs: NonNegInt = 0
    #: How the estimate was made, or why there is none.
    estimate_note: str | None = None
    #: Set when the deadline looks infeasible and `deadline_policy` is `warn` (admitted anyway).
    deadline_warning: str | None = None


class JobRef(Wire, kw_only=True):
    job_id: Token
    #: Whose job: ignored for a tenant key (always its own tenant); an operator key must name it
    #: when two tenants use the same job id.
    tenant: Token | None = None


class JobInfo(Wire, kw_only=True):
    job_id: Token
    tenant: str
    state: JobState
    pool: str
    priority: str
    operation: str
    node_id: str | None = None
    attempts: NonNegInt = 0
    percent: float | None = None
    fps: float | None = None
    speed: float | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    queue_wait_s: float | None = None
    run_time_s: float | None = None
    last_error: str | None = None
    stderr_tail: str | None = None
    result: JobResult | None = None
    dead_lettered: bool = False
    #: The job spec's input and output URIs, as submitted.
    input: str | None = None
    output: str | None = None


class JobListRequest(Wire, kw_only=True):
    state: JobState | None = None
    tenant: Token | None = None
    node_id: NodeId | None = None
    since: float | None = None
    until: float | None = None
    limit: Limit = 50
    #: Opaque cursor from the previous page's `next_cursor`.
    cursor: str | None = None


class JobListReply(Wire, kw_only=True):
    jobs: list[JobInfo]
    next_cursor: str | None = None


class JobEventRecord(Wire, kw_only=True):
    event_id: str
    kind: str
    node_id: str
    attempt: int
    ts: float
    body: dict[str, Any]


class JobEventsReply(Wire, kw_only=True):
    job_id: Token
    tenant: str = ""
    events: list[JobEventRecord]


class NodeInfo(Wire, kw_only=True):
    node_id: NodeId
    state: NodeState
    last_seen: float | None = None
    capabilities: NodeCapabilities | None = None
    #: For a tenant key, `heartbeat.running_jobs` lists only that tenant's jobs.
    heartbeat: Heartbeat | None = None
    #: Jobs running on the node, every tenant's: the capacity a tenant may count on.
    running: NonNegInt | None = None


class NodeListRequest(Wire, kw_only=True):
    """A page of node.list. The first page is asked with an empty body (which every release's
    control plane reads); the next ones name the last node id of the page before."""

    after: NodeId | None = None


#: Unset `next_after` is left out, so a reply that fits one page reads as it did before paging.
class NodeListReply(Wire, kw_only=True, omit_defaults=True):
    nodes: list[NodeInfo]
    #: More nodes follow (ids sorted): ask again with `after` set to this.
    next_after: NodeId | None = None


class NodeRef(Wire, kw_only=True):
    node_id: NodeId
    deadline_s: float | None = None


class NodeWindowsRequest(Wire, kw_only=True):
    """node.windows: the processing windows a node keeps in force (across restarts) from now.
    `[]`: none (every class is pulled at any time); null or absent: back to the node's config
    file's `[[windows]]`."""

    node_id: NodeId
    windows: Annotated[list[WindowRule], msgspec.Meta(max_length=MAX_WINDOWS)] | None = None


class CancelRequest(Wire, kw_only=True):
    job_id: Token
    tenant: Token | None = None  # as in JobRef
    reason: str = "cancelled by operator"


class AckReply(Wire, kw_only=True):
    ok: bool
    message: str = ""


class PoolSummary(Wire, kw_only=True):
    pool: str
    queued: NonNegInt
    oldest_wait_s: float | None = None
    nodes_online: NonNegInt = 0


class SummaryReply(Wire, kw_only=True):
    jobs_by_state: dict[str, NonNegInt]
    nodes_by_state: dict[str, NonNegInt]
    pools: list[PoolSummary]
    alerts_firing: list[Alert] = []


# -- API keys and tenants (operator keys only) ----------------------------------------------

#: A key's short public id; the key itself is shown once and never stored.
KeyId = Annotated[str, msgspec.Meta(pattern=r"^k_[0-9a-f]{12}$")]
Role = Literal["tenant", "operator"]
KeyName = Annotated[str, msgspec.Meta(max_length=200)]
Seconds = Annotated[float, msgspec.Meta(gt=0, le=10 * 365 * 86400)]
GraceSeconds = Annotated[float, msgspec.Meta(ge=0, le=365 * 86400)]


class KeyCreateRequest(Wire, kw_only=True):
    tenant: Token
    #: `tenant`: acts on that tenant's jobs only; `operator`: fleet-wide.
    role: Role = "tenant"
    name: KeyName = ""
    #: Seconds until the key expires; None: it does not expire.
    expires_in_s: Seconds | None = None


class KeyRef(Wire, kw_only=True):
    key_id: KeyId


class KeyRotateRequest(Wire, kw_only=True):
    key_id: KeyId
    #: Seconds the old key keeps working, so that its users can switch; 0 ends it now.
    grace_s: GraceSeconds = 3600.0
    #: The new key's lifetime; None: the old key's lifetime, or none if it had none.
    expires_in_s: Seconds | None = None


class KeyListRequest(Wire, kw_only=True):
    tenant: Token | None = None


class KeyInfo(Wire, kw_only=True):
    """A key as `key.list` shows it: never the key, never its hash."""

    key_id: KeyId
    tenant: str
    role: Role
    name: str = ""
    state: Literal["active", "expired", "revoked"]
    created_at: float
    expires_at: float | None = None
    last_used_at: float | None = None
    revoked_at: float | None = None
    rotated_from: str | None = None


class KeyCreated(Wire, kw_only=True):
    """The reply of `key.create` and `key.rotate`: the only time the key is shown."""

    key: str
    info: KeyInfo
    #: On rotation: when the old key stops working.
    old_key_expires_at: float | None = None


class KeyListReply(Wire, kw_only=True):
    keys: list[KeyInfo]


class TenantCreateRequest(Wire, kw_only=True):
    tenant: Token
    max_queued: NonNegInt = 10_000
    submit_rate: Annotated[float, msgspec.Meta(gt=0)] = 50.0
    submit_burst: Annotated[int, msgspec.Meta(ge=1)] = 100


class TenantInfo(Wire, kw_only=True):
    tenant: Token
    max_queued: NonNegInt
    submit_rate: float
    submit_burst: int
    created_at: float
    active_keys: NonNegInt = 0


class TenantCreated(Wire, kw_only=True):
    """The reply of `tenant.create`: the webhook signing secret is shown this once."""

    info: TenantInfo
    webhook_secret: str


class TenantListReply(Wire, kw_only=True):
    tenants: list[TenantInfo]
