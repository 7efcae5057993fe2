"""Workflow specs (the graph rules, references, job ids) and the reconcile's pure decision."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from control.workflows.plan import StepChange, StepView, plan
from schemas.codec import DecodeError, Decoder
from schemas.operations import Analyze, Transcode
from schemas.workflows import WorkflowSpec, find_cycle

DECODER: Decoder[WorkflowSpec] = Decoder(WorkflowSpec, "workflow")
SRC = "file:///media/src.mp4"


def step(name: str, needs: list[str] | None = None, **over: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "needs": needs or [],
        "operation": {"op": "transcode", "height": 64},
        "input": SRC,
        "output": f"file:///out/{name}.mp4",
    }
    doc.update(over)
    return doc


def decode(steps: list[dict[str, Any]], **over: Any) -> WorkflowSpec:
    doc = {"workflow_id": "wf1", "tenant": "acme", "steps": steps, **over}
    return DECODER.decode(msgspec.json.encode(doc))


def refused(steps: list[dict[str, Any]], **over: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(steps, **over)
    return str(info.value)


def test_a_pipeline_resolves_each_reference_to_the_needed_steps_output() -> None:
    spec = decode(
        [
            step("probe", operation={"op": "probe"}, output=None),
            step("transcode", ["probe"]),
            step(
                "analyze",
                ["transcode"],
                input="step:transcode",
                output="file:///out/a.json",
                operation={"op": "analyze", "reference": SRC},
            ),
            step(
                "thumb",
                ["transcode"],
                input="step:transcode",
                output="file:///out/t.jpg",
                operation={"op": "thumbnail"},
            ),
        ],
        priority="high",
    )
    jobs = spec.jobs()
    assert list(jobs) == ["probe", "transcode", "analyze", "thumb"]
    assert jobs["analyze"].job_id == "wf1--analyze"
    assert jobs["analyze"].input == "file:///out/transcode.mp4"
    assert isinstance(jobs["analyze"].operation, Analyze)
    assert jobs["thumb"].input == "file:///out/transcode.mp4"
    assert {j.tenant for j in jobs.values()} == {"acme"}
    assert {j.priority for j in jobs.values()} == {"high"}
    assert jobs["thumb"].metadata == {"workflow": "wf1", "workflow_step": "thumb"}
    tc = jobs["transcode"].operation
    assert isinstance(tc, Transcode) and tc.container == "mp4"  # settled like any job's


def test_duplicate_names_are_refused() -> None:
    assert "duplicate step name 'a'" in refused([step("a"), step("a")])


def test_unknown_needs_are_refused_naming_the_steps() -> None:
    message = refused([step("a"), step("b", ["nope"])])
    assert "step 'b' needs unknown step 'nope' (steps: a, b)" in message


def test_a_cycle_is_refused_and_shown() -> None:
    message = refused([step("a", ["c"]), step("b", ["a"]), step("c", ["b"])])
    assert "steps form a cycle: a -> c -> b -> a" in message
    assert "needs itself" in refused([step("a", ["a"])])


def test_a_reference_must_name_a_needed_step_that_writes_output() -> None:
    message = refused([step("a"), step("b", input="step:a")])
    assert "input step:a must be one of its `needs` (none)" in message
    probe = step("p", operation={"op": "probe"}, output=None)
    assert "input step:p writes no output" in refused([probe, step("b", ["p"], input="step:p")])


def test_each_step_must_be_a_valid_job() -> None:
    message = refused([step("a", output="file:///out/a.xyz")])
    assert "step 'a'" in message and "output extension .xyz" in message
    assert "step 'a'" in refused([step("a", input="ftp://x/y")])
    canary = step("a", operation={"op": "canary"}, input="canary:", output=None)
    assert "canary" in refused([canary])


def test_size_and_names_are_bounded() -> None:
    assert "length" in refused([step(f"s{i}") for i in range(21)])
    assert "$.steps[0].name" in refused([step("has-dash")])
    long_id = "w" * 120
    assert "over 128 characters" in refused([step("abcdefgh")], workflow_id=long_id)


def test_find_cycle() -> None:
    assert find_cycle({"a": [], "b": ["a"], "c": ["a", "b"]}) == []
    assert find_cycle({"a": ["b"], "b": ["a"]}) == ["a", "b", "a"]


def view(name: str, state: str, needs: tuple[str, ...] = (), job: str | None = None,
         error: str | None = None) -> StepView:  # fmt: skip
    return StepView(name, needs, state, job, error)  # type: ignore[arg-type]


def test_plan_submits_the_roots_then_each_step_whose_needs_completed() -> None:
    steps = [view("a", "waiting"), view("b", "waiting", ("a",)), view("c", "waiting")]
    assert plan("running", steps).submit == ["a", "c"]
    steps = [view("a", "submitted", job="completed"), view("b", "waiting", ("a",)),
             view("c", "submitted", job="running")]  # fmt: skip
    p = plan("running", steps)
    assert p.submit == ["b"]
    assert p.changes == {"a": StepChange("completed")}
    assert p.workflow is None


def test_plan_is_idempotent_for_what_is_already_submitted() -> None:
    steps = [view("a", "submitted", job="queued"), view("b", "waiting", ("a",))]
    p = plan("running", steps)
    assert p.submit == [] and p.changes == {} and p.workflow is None
    # Not marked (a crash after publishing) but recorded as a job: adopted, not resubmitted.
    p = plan("running", [view("a", "waiting", job="running")])
    assert p.submit == [] and p.changes == {"a": StepChange("submitted")}
    # Recorded but not yet ingested: a submitted step with no job row waits.
    assert plan("running", [view("a", "submitted")]).submit == []


def test_plan_completes_the_workflow_when_every_step_completed() -> None:
    steps = [view("a", "completed", job="completed"), view("b", "submitted", ("a",), "completed")]
    p = plan("running", steps)
    assert p.workflow == "completed" and p.changes == {"b": StepChange("completed")}


def test_a_failed_step_fails_the_workflow_and_cancels_what_waits() -> None:
    steps = [
        view("a", "submitted", job="failed", error="ffmpeg exited 1"),
        view("b", "waiting", ("a",)),
        view("c", "submitted", job="running"),
        view("d", "waiting", ("c",)),
    ]
    p = plan("running", steps)
    assert p.workflow == "failed"
    assert p.error == "step 'a' failed: ffmpeg exited 1"
    assert p.submit == []
    assert p.changes == {
        "a": StepChange("failed", "ffmpeg exited 1"),
        "b": StepChange("cancelled", "workflow failed"),
        "d": StepChange("cancelled", "workflow failed"),
    }


def test_a_cancelled_workflow_submits_nothing_and_settles_its_steps() -> None:
    steps = [view("a", "submitted", job="cancelled", error="stop"), view("b", "waiting", ("a",))]
    p = plan("cancelled", steps)
    assert p.submit == [] and p.workflow is None
    assert p.changes == {
        "a": StepChange("cancelled", "stop"),
        "b": StepChange("cancelled", "workflow cancelled"),
    }
    # A step job cancelled on its own fails a running workflow.
    p = plan("running", [view("a", "submitted", job="cancelled", error="by hand")])
    assert p.workflow == "failed" and p.error == "step 'a' cancelled: by hand"
