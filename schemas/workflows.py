"""Workflows: one submission naming a small DAG of jobs whose outputs feed later steps.

Each step is an ordinary job on the wire (daemons know nothing of workflows). Its job id is
`<workflow_id>--<step name>` (step names have no `-`, so the split is unambiguous), its tenant
and priority are the workflow's. A step's `input` may be `step:<name>`: that step's `output`
URI, which must be one of the step's `needs`. References are resolved when the workflow is
decoded, so every step's job spec is checked (as a job submit checks it) before anything runs.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.common import CallbackUrl, NonNegInt, OutputUri, Part, Priority, Token, Wire
from schemas.jobs import JobSpec, Requirements, Timeouts
from schemas.operations import Canary, Operation

#: Most steps in one workflow: a workflow is a small pipeline, not a batch.
MAX_STEPS = 20
#: Joins the workflow id and a step name into the step's job id.
SEPARATOR = "--"
#: What a step's `input` starts with to name another step's output.
STEP_REF = "step:"
StepName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_]{1,32}$", max_length=32)]
#: A media URI the job's `input` allows, or `step:<name>`.
StepInput = Annotated[
    str,
    msgspec.Meta(
        min_length=1, max_length=4096,
        description="file:, http(s)://, nats-obj:// or s3:// URI, or step:<name> (that step's "
        "output)",
    ),
]  # fmt: skip
WorkflowState = Literal["running", "completed", "failed", "cancelled"]
StepState = Literal["waiting", "submitted", "completed", "failed", "cancelled"]
WORKFLOW_STATES: tuple[WorkflowState, ...] = ("running", "completed", "failed", "cancelled")


class WorkflowStep(Part, kw_only=True):
    """One step: a job template and the steps it runs after."""

    name: StepName
    #: Steps that must have completed before this one is submitted.
    needs: Annotated[list[StepName], msgspec.Meta(max_length=MAX_STEPS)] = []
    operation: Operation
    input: StepInput
    output: OutputUri | None = None
    requirements: Requirements = msgspec.field(default_factory=Requirements)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    #: Attempts of this step's job (retries happen inside the job, as for any job).
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    metadata: dict[Annotated[str, msgspec.Meta(max_length=64)], str] = {}

    @property
    def ref(self) -> str | None:
        """The step named by `input` when it is `step:<name>`."""
        return self.input[len(STEP_REF) :] if self.input.startswith(STEP_REF) else None


class WorkflowSpec(Wire, kw_only=True):
    workflow_id: Token
    tenant: Token = "default"
    priority: Priority = "normal"
    steps: Annotated[list[WorkflowStep], msgspec.Meta(min_length=1, max_length=MAX_STEPS)]
    #: Where the control plane POSTs each step job's end, as a job's `callback_url`.
    callback_url: CallbackUrl | None = None

    def __post_init__(self) -> None:
        check_graph(self.steps)
        for step in self.steps:
            job_id = step_job_id(self.workflow_id, step.name)
            if len(job_id) > 128:
                raise ValueError(
                    f"step {step.name!r}: job id {job_id!r} is over 128 characters; shorten "
                    "the workflow id or the step name"
                )
        self.jobs()  # every step's job spec must be one a job submit accepts

    def jobs(self) -> dict[str, JobSpec]:
        """Each step's job spec, references resolved, in step order."""
        outputs = {s.name: s.output for s in self.steps}
        out: dict[str, JobSpec] = {}
        for step in self.steps:
            out[step.name] = step_job(self, step, outputs)
        return out


def step_job_id(workflow_id: str, step: str) -> str:
    return f"{workflow_id}{SEPARATOR}{step}"


def step_job(spec: WorkflowSpec, step: WorkflowStep, outputs: dict[str, str | None]) -> JobSpec:
    """The job a step submits; ValueError naming the step when it is not a valid job."""
    source = step.input
    if step.ref is not None:
        found = outputs.get(step.ref)
        if found is None:  # check_graph made sure the step exists
            raise ValueError(f"step {step.name!r}: input step:{step.ref} writes no output")
        source = found
    if isinstance(step.operation, Canary):
        raise ValueError(f"step {step.name!r}: canary jobs are the control plane's own")
    doc = {
        "job_id": step_job_id(spec.workflow_id, step.name),
        "tenant": spec.tenant,
        "priority": spec.priority,
        "input": source,
        "output": step.output,
        "operation": msgspec.to_builtins(step.operation),
        "requirements": msgspec.to_builtins(step.requirements),
        "timeouts": msgspec.to_builtins(step.timeouts),
        "max_attempts": step.max_attempts,
        "callback_url": spec.callback_url,
        "metadata": {**step.metadata, "workflow": spec.workflow_id, "workflow_step": step.name},
    }
    try:
        return msgspec.convert(doc, JobSpec)
    except (msgspec.ValidationError, ValueError) as exc:
        raise ValueError(f"step {step.name!r}: {exc}") from exc


def check_graph(steps: list[WorkflowStep]) -> None:
    """Unique names, needs that exist, references only to needed steps, no cycle."""
    names: set[str] = set()
    for step in steps:
        if step.name in names:
            raise ValueError(f"duplicate step name {step.name!r}: step names must be unique")
        names.add(step.name)
    for step in steps:
        for need in step.needs:
            if need not in names:
                known = ", ".join(sorted(names))
                raise ValueError(f"step {step.name!r} needs unknown step {need!r} (steps: {known})")
            if need == step.name:
                raise ValueError(f"step {step.name!r} needs itself")
        if len(set(step.needs)) != len(step.needs):
            raise ValueError(f"step {step.name!r} names a step in `needs` twice")
        if step.ref is not None and step.ref not in step.needs:
            raise ValueError(
                f"step {step.name!r}: input step:{step.ref} must be one of its `needs` "
                f"({', '.join(step.needs) or 'none'})"
            )
    cycle = find_cycle({s.name: list(s.needs) for s in steps})
    if cycle:
        raise ValueError(f"steps form a cycle: {' -> '.join(cycle)}")


def find_cycle(needs: dict[str, list[str]]) -> list[str]:
    """One cycle in the needs graph as a path that ends where it starts; [] when acyclic."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(name: str) -> list[str]:
        if name in on_path:
            return [*path[path.index(name) :], name]
        if name in done:
            return []
        path.append(name)
        on_path.add(name)
        for need in needs.get(name, []):
            found = visit(need)
            if found:
                return found
        path.pop()
        on_path.discard(name)
        done.add(name)
        return []

    for name in needs:
        found = visit(name)
        if found:
            return found
    return []


# -- API (`<prefix>.api.workflow.*`) ----------------------------------------------------------


class WorkflowSubmitRequest(Wire, kw_only=True):
    workflow: WorkflowSpec


class WorkflowSubmitReply(Wire, kw_only=True):
    workflow_id: Token
    tenant: Token
    #: The same workflow was already submitted (same id and steps): nothing new was made.
    duplicate: bool = False


class WorkflowRef(Wire, kw_only=True):
    workflow_id: Token
    #: As JobRef.tenant: a tenant key acts on its own tenant's only.
    tenant: Token | None = None


class WorkflowCancelRequest(Wire, kw_only=True):
    workflow_id: Token
    tenant: Token | None = None
    reason: Annotated[str, msgspec.Meta(max_length=200)] = "workflow cancelled"


class StepInfo(Wire, kw_only=True):
    name: str
    needs: list[str]
    state: StepState
    job_id: str
    operation: str
    #: The job's state once submitted (`submitted` until ingest has recorded it).
    job_state: str | None = None
    input: str | None = None
    output: str | None = None
    error: str | None = None


class WorkflowInfo(Wire, kw_only=True):
    workflow_id: Token
    tenant: str
    state: WorkflowState
    priority: str
    created_at: float
    finished_at: float | None = None
    error: str | None = None
    steps: list[StepInfo] = []


class WorkflowListRequest(Wire, kw_only=True):
    state: WorkflowState | None = None
    tenant: Token | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


class WorkflowSummary(Wire, kw_only=True):
    workflow_id: Token
    tenant: str
    state: WorkflowState
    created_at: float
    finished_at: float | None = None
    steps: NonNegInt = 0
    completed: NonNegInt = 0


class WorkflowListReply(Wire, kw_only=True):
    workflows: list[WorkflowSummary]
