"""Everything a daemon reports, published on `<prefix>.events.<node>.<kind>`.

One tagged union on `kind`; every event has its own `event_id` (the `Nats-Msg-Id`), so each write
keyed by it is idempotent.
"""

from __future__ import annotations

from typing import Literal

from schemas.common import (
    LongText,
    NodeId,
    NonNegFloat,
    NonNegInt,
    Percent,
    Priority,
    Report,
    ShortText,
    TenantOrBlank,
    Token,
)
from schemas.jobs import JobSpec
from schemas.nodes import NodeCapabilities, NodeState
from schemas.results import JobResult, OutputFile

ErrorKind = Literal["transient", "permanent", "timeout", "resource", "interrupted"]
TERMINAL_KINDS = frozenset({"completed", "failed", "cancelled"})


class _JobEvent(Report, kw_only=True, tag_field="kind"):
    event_id: Token
    job_id: Token
    #: A job is named by (tenant, job_id): two tenants may use the same job id. "" from nodes
    #: older than this field; the control plane then takes the one tenant that has the id.
    tenant: TenantOrBlank = ""
    node_id: NodeId
    attempt: NonNegInt = 1
    ts: float


class Accepted(_JobEvent, kw_only=True, tag="accepted"):
    pool: Token
    priority: Priority
    tenant: Token  # required here since the first version
    operation: Token
    stream_seq: NonNegInt = 0
    submitted_ts: float | None = None
    #: The job as the node decoded it: a job published straight to NATS is known to the control
    #: plane only through its events. Absent from nodes older than this field.
    spec: JobSpec | None = None


class Started(_JobEvent, kw_only=True, tag="started"):
    encoder: str | None = None
    command: list[str] = []


class Progress(_JobEvent, kw_only=True, tag="progress"):
    percent: Percent | None = None
    fps: NonNegFloat | None = None
    speed: NonNegFloat | None = None
    out_time_s: NonNegFloat | None = None
    frame: NonNegInt | None = None
    paused: bool = False
    #: The job has run past its soft timeout (paused time excluded): it goes on, reported as slow.
    slow: bool = False


class OutputWritten(_JobEvent, kw_only=True, tag="output"):
    output: OutputFile


class Completed(_JobEvent, kw_only=True, tag="completed"):
    result: JobResult


class Failed(_JobEvent, kw_only=True, tag="failed"):
    reason: ShortText
    error_kind: ErrorKind
    final: bool
    exit_code: int | None = None
    stderr_tail: LongText = ""


class Retrying(_JobEvent, kw_only=True, tag="retrying"):
    reason: ShortText
    next_attempt: NonNegInt
    delay_s: NonNegFloat


class Cancelled(_JobEvent, kw_only=True, tag="cancelled"):
    reason: ShortText = "cancelled"


class Interrupted(_JobEvent, kw_only=True, tag="interrupted"):
    """A restarted daemon found this job running in its journal: JetStream will redeliver it."""

    reason: ShortText = "daemon restarted while the job ran"


class HandedBack(_JobEvent, kw_only=True, tag="handed_back"):
    """The node cannot meet the job's requirements and returned it for another node."""

    reason: ShortText
    delay_s: NonNegFloat = 0.0


class _NodeEvent(Report, kw_only=True, tag_field="kind"):
    event_id: Token
    node_id: NodeId
    ts: float


class CapabilitiesChanged(_NodeEvent, kw_only=True, tag="capabilities"):
    capabilities: NodeCapabilities


class NodeStateChanged(_NodeEvent, kw_only=True, tag="node_state"):
    state: NodeState
    reason: ShortText = ""


class EncoderHealth(_NodeEvent, kw_only=True, tag="encoder_health"):
    encoder: str
    healthy: bool
    reason: ShortText = ""


JobEvent = (
    Accepted
    | Started
    | Progress
    | OutputWritten
    | Completed
    | Failed
    | Retrying
    | Cancelled
    | Interrupted
    | HandedBack
)
NodeEvent = CapabilitiesChanged | NodeStateChanged | EncoderHealth
Event = JobEvent | NodeEvent


def kind_of(event: Event) -> str:
    return str(type(event).__struct_config__.tag)


def is_job_event(event: Event) -> bool:
    return isinstance(event, _JobEvent)
