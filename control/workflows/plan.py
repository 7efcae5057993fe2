"""The pure decision of one reconcile: from a workflow's state and its steps' job states, what
to submit, which steps end and whether the workflow ends.

It is a reconcile, not an event handler: the same inputs give the same plan, so running it again
(a second trigger, a sweep, a new leader after failover) repeats nothing that was done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from schemas.workflows import StepState, WorkflowState

#: Job states that end a step, and the step state each gives.
ENDS: dict[str, StepState] = {
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


@dataclass(frozen=True, slots=True)
class StepView:
    """A step as stored, with its job's state (None: no job row recorded under its id)."""

    name: str
    needs: tuple[str, ...]
    state: StepState
    job_state: str | None = None
    job_error: str | None = None


@dataclass(frozen=True, slots=True)
class StepChange:
    state: StepState
    error: str | None = None


@dataclass(slots=True)
class Plan:
    #: Steps to submit now, in step order: waiting, every need completed, workflow running.
    submit: list[str] = field(default_factory=list)
    #: Steps whose stored state changes.
    changes: dict[str, StepChange] = field(default_factory=dict)
    #: The workflow's new state; None: unchanged.
    workflow: WorkflowState | None = None
    error: str | None = None


def plan(state: WorkflowState, steps: Sequence[StepView]) -> Plan:
    out = Plan()
    now: dict[str, StepState] = {}
    for step in steps:
        settled = step.state
        if settled == "waiting" and step.job_state is not None:
            # Published (and recorded by ingest) but its mark was lost: adopt it, never resubmit.
            settled = "submitted"
        if settled == "submitted" and step.job_state in ENDS:
            settled = ENDS[step.job_state]
        if settled != step.state:
            error = step.job_error if settled in ("failed", "cancelled") else None
            out.changes[step.name] = StepChange(settled, error)
        now[step.name] = settled
    ended = state
    if state == "running":
        bad = next((s for s in steps if now[s.name] in ("failed", "cancelled")), None)
        if bad is not None:
            ended = out.workflow = "failed"
            why = bad.job_error or "no reason given"
            out.error = f"step {bad.name!r} {now[bad.name]}: {why}"
        elif all(now[s.name] == "completed" for s in steps):
            out.workflow = "completed"
            return out
        else:
            out.submit = [
                s.name
                for s in steps
                if now[s.name] == "waiting" and all(now[n] == "completed" for n in s.needs)
            ]
            return out
    # Ended (failed, cancelled): nothing more is submitted, what waits will never run.
    reason = f"workflow {ended}"
    for step in steps:
        if now[step.name] == "waiting":
            out.changes[step.name] = StepChange("cancelled", reason)
    return out
