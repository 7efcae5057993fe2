"""Workflows against a real dev fleet: a five-step pipeline whose outputs feed the next steps,
a leader killed mid-workflow (nothing lost, nothing run twice), a cancel that stops the running
step and submits nothing more, and specs the CLI and the API refuse naming what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio

from common.natsconn import NatsSettings
from control.cli.apiclient import ApiClient
from control.devstack.fleet import DevFleet
from control.leader import LEASE_KEY
from daemon.ffmpeg.tools import FfmpegTools
from schemas import api
from schemas.workflows import StepInfo, WorkflowInfo, WorkflowRef
from tests.support.devfleet import CliResult, dev_fleet, open_dir, run_cli
from tests.support.media import make_clip


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-workflows-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path) -> AsyncIterator[DevFleet]:
    async with dev_fleet(work, 1, roots=[media_dir, work / "out"]) as f:
        yield f


def client(fleet: DevFleet) -> ApiClient:
    return ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix))


async def submit(work: Path, doc: dict[str, Any], *extra: str) -> CliResult:
    path = work / f"{doc.get('workflow_id', 'bad')}-{time.monotonic_ns()}.json"
    await asyncio.to_thread(path.write_text, json.dumps(doc))
    return await run_cli("workflow", "submit", str(path), *extra)


async def until_info(
    fleet: DevFleet, workflow_id: str, done: Callable[[WorkflowInfo], bool], limit_s: float = 240
) -> WorkflowInfo:
    """Poll workflow.get until `done` (bounded: a stuck workflow fails the test, shown whole)."""
    deadline = time.monotonic() + limit_s
    info: WorkflowInfo | None = None
    async with client(fleet) as c:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # an instance may be gone mid-request
                info = await c.call("workflow.get", WorkflowRef(workflow_id=workflow_id),
                                    WorkflowInfo)  # fmt: skip
                if done(info):
                    return info
            await asyncio.sleep(0.2)
    raise AssertionError(f"workflow {workflow_id} did not get there: {info}")


def ended(info: WorkflowInfo) -> bool:
    return info.state != "running" and all(s.state != "submitted" for s in info.steps)


def pipeline(workflow_id: str, src: Path, out: Path) -> dict[str, Any]:
    """probe -> transcode -> package -> analyze (the transcode against the source) -> thumbnail;
    package, analyze and thumbnail read the transcode's output."""
    return {
        "workflow_id": workflow_id,
        "tenant": "acme",
        "steps": [
            {"name": "probe", "operation": {"op": "probe"}, "input": src.as_uri()},
            {
                "name": "transcode", "needs": ["probe"], "input": src.as_uri(),
                "output": (out / "tc.mp4").as_uri(),
                "operation": {"op": "transcode", "height": 96, "preset": "ultrafast"},
            },
            {
                "name": "package", "needs": ["transcode"], "input": "step:transcode",
                "output": (out / "pkg").as_uri(),
                "operation": {"op": "package", "segment_seconds": 1.0, "preset": "ultrafast",
                              "ladder": [{"height": 96, "bitrate_kbps": 150}]},
            },
            {
                "name": "analyze", "needs": ["package", "transcode"], "input": "step:transcode",
                "output": (out / "an.json").as_uri(),
                "operation": {"op": "analyze", "reference": src.as_uri(), "vmaf": False},
            },
            {
                "name": "thumbnail", "needs": ["analyze", "transcode"], "input": "step:transcode",
                "output": (out / "thumb.jpg").as_uri(), "operation": {"op": "thumbnail"},
            },
        ],
    }  # fmt: skip


async def job_of(c: ApiClient, step: StepInfo) -> api.JobInfo:
    return await c.call("job.get", api.JobRef(job_id=step.job_id, tenant="acme"), api.JobInfo)


async def completed_once(c: ApiClient, step: StepInfo) -> None:
    """The step's job ran one attempt and has exactly one `completed` event."""
    ref = api.JobRef(job_id=step.job_id, tenant="acme")
    events = (await c.call("job.events", ref, api.JobEventsReply)).events
    kinds = [e.kind for e in events]
    assert kinds.count("completed") == 1, (step.name, kinds)
    assert kinds.count("accepted") == 1 and kinds.count("started") == 1, (step.name, kinds)


async def test_a_five_step_workflow_feeds_each_output_to_the_next(
    fleet: DevFleet, clip_small: Path, work: Path
) -> None:
    out = work / "out" / "wf-five"
    await asyncio.to_thread(out.mkdir)
    res = await submit(work, pipeline("wf-five", clip_small, out))
    assert res.rc == 0 and "submitted workflow wf-five (5 steps)" in res.out, res
    info = await until_info(fleet, "wf-five", ended)
    assert info.state == "completed", info
    assert [s.state for s in info.steps] == ["completed"] * 5, info
    steps = {s.name: s for s in info.steps}
    tc = (out / "tc.mp4").as_uri()
    async with client(fleet) as c:
        jobs = {name: await job_of(c, s) for name, s in steps.items()}
        for s in info.steps:
            await completed_once(c, s)
    assert {j.job_id for j in jobs.values()} == {f"wf-five--{n}" for n in steps}
    for name in ("package", "analyze", "thumbnail"):
        assert jobs[name].input == tc, (name, jobs[name])  # the transcode's output, resolved
    # Each step was submitted only once every step it needs had completed.
    for name, s in steps.items():
        for need in s.needs:
            finished, submitted = jobs[need].finished_at, jobs[name].submitted_at
            assert finished is not None and submitted is not None and submitted >= finished
    assert jobs["probe"].result is not None and jobs["probe"].result.probe is not None
    analyzed = jobs["analyze"].result
    assert analyzed is not None and analyzed.psnr is not None and analyzed.ssim is not None
    assert (out / "tc.mp4").stat().st_size > 0 and (out / "thumb.jpg").stat().st_size > 0
    assert (out / "pkg" / "master.m3u8").exists()
    # Submitting the same workflow again makes nothing new; another under its id is refused.
    res = await submit(work, pipeline("wf-five", clip_small, out), "--json")
    assert res.rc == 0 and json.loads(res.out)["duplicate"] is True, res
    other = pipeline("wf-five", clip_small, out)
    other["steps"] = other["steps"][:1]
    res = await submit(work, other)
    assert res.rc == 2 and "workflow id 'wf-five' is already used" in res.err, res
    listed = await run_cli("workflow", "list", "--json")
    assert any(
        w["workflow_id"] == "wf-five" and w["completed"] == 5
        for w in json.loads(listed.out)["workflows"]
    ), listed


async def leader_of(fleet: DevFleet) -> str:
    nc = await nats.connect(fleet.nats_url)
    try:
        kv = await nc.jetstream().key_value(f"{fleet.prefix}_leader")
        entry = await kv.get(LEASE_KEY)
        return (entry.value or b"").decode()
    finally:
        await nc.close()


async def until(check: Callable[[], Awaitable[bool]], limit_s: float = 120) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if await check():
                return
        await asyncio.sleep(0.3)
    raise AssertionError("condition not reached")


@pytest.mark.timeout(420)
async def test_a_leader_killed_mid_workflow_loses_no_step_and_runs_none_twice(
    fleet: DevFleet, clip_small: Path, work: Path
) -> None:
    await fleet.add_control("control-b")
    first = await leader_of(fleet)
    assert first in ("control", "control-b")
    out = work / "out" / "wf-failover"
    await asyncio.to_thread(out.mkdir)
    res = await submit(work, pipeline("wf-failover", clip_small, out))
    assert res.rc == 0, res

    # Kill the leader once it has submitted the first step: the rest is the other's to do.
    def started(info: WorkflowInfo) -> bool:
        return info.steps[0].state != "waiting"

    before = await until_info(fleet, "wf-failover", started)
    proc = fleet.procs[first]
    os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()
    survivor = "control-b" if first == "control" else "control"
    # The leader logs a step's submission before its transaction commits: a step its log does
    # not name is still the survivor's to submit, however far the leader got after the poll.
    dead_log = await asyncio.to_thread((fleet.data_dir / f"{first}.log").read_text)
    waiting = [
        s.name for s in before.steps
        if f"submitted step {s.name} as wf-failover--{s.name}" not in dead_log
    ]  # fmt: skip
    assert waiting, before  # really mid-workflow

    async def took_over() -> bool:
        return await leader_of(fleet) == survivor

    await until(took_over)
    info = await until_info(fleet, "wf-failover", ended)
    assert info.state == "completed", info
    async with client(fleet) as c:

        async def all_ingested() -> bool:
            # A batch the killed instance pulled but never committed comes back after the
            # ingest consumer's ack wait (60 s): until then a step may lack its `accepted`.
            for s in info.steps:
                ref = api.JobRef(job_id=s.job_id, tenant="acme")
                kinds = {
                    e.kind for e in (await c.call("job.events", ref, api.JobEventsReply)).events
                }
                if not {"accepted", "started", "completed"} <= kinds:
                    return False
            return True

        await until(all_ingested, limit_s=180)
        for s in info.steps:
            await completed_once(c, s)
            assert (await job_of(c, s)).attempts == 1, s
    log = await asyncio.to_thread((fleet.data_dir / f"{survivor}.log").read_text)
    for name in waiting:  # submitted by the new leader
        assert f"submitted step {name} as wf-failover--{name}" in log, name


async def test_cancel_stops_the_running_step_and_submits_nothing_more(
    fleet: DevFleet, ffmpeg_tools: FfmpegTools, media_dir: Path, work: Path
) -> None:
    long = await make_clip(ffmpeg_tools.ffmpeg, media_dir / "wf-long.mp4", seconds=40)
    out = work / "out" / "wf-cancel"
    doc = {
        "workflow_id": "wf-cancel",
        "tenant": "acme",
        "steps": [
            {"name": "probe", "operation": {"op": "probe"}, "input": long.as_uri()},
            {
                "name": "encode", "needs": ["probe"], "input": long.as_uri(),
                "output": (out / "slow.mp4").as_uri(),
                "operation": {"op": "transcode", "codec": "hevc", "preset": "slow"},
            },
            {
                "name": "thumb", "needs": ["encode"], "input": "step:encode",
                "output": (out / "thumb.jpg").as_uri(), "operation": {"op": "thumbnail"},
            },
        ],
    }  # fmt: skip
    await asyncio.to_thread(out.mkdir)
    assert (await submit(work, doc)).rc == 0

    def encoding(info: WorkflowInfo) -> bool:
        return info.steps[1].job_state == "running"

    await until_info(fleet, "wf-cancel", encoding)
    res = await run_cli("workflow", "cancel", "wf-cancel", "--reason", "test says stop")
    assert res.rc == 0 and "1 submitted step(s) asked to stop" in res.out, res
    info = await until_info(fleet, "wf-cancel", ended)
    assert info.state == "cancelled" and info.error == "test says stop", info
    states = {s.name: (s.state, s.job_state) for s in info.steps}
    assert states == {
        "probe": ("completed", "completed"),
        "encode": ("cancelled", "cancelled"),
        "thumb": ("cancelled", None),
    }, states
    # Nothing submitted the thumbnail: its job was never made.
    res = await run_cli("status", "wf-cancel--thumb", "--tenant", "acme")
    assert res.rc == 4, res
    res = await run_cli("workflow", "cancel", "wf-cancel")
    assert res.rc == 2 and "has already ended (cancelled)" in res.err, res
    res = await run_cli("workflow", "status", "wf-cancel")
    assert res.rc == 0 and "cancelled" in res.out, res


@pytest.mark.parametrize(
    ("steps", "wanted"),
    [
        (
            [{"name": "a", "needs": ["b"]}, {"name": "b", "needs": ["a"]}],
            "steps form a cycle: a -> b -> a",
        ),
        ([{"name": "a", "needs": ["zz"]}], "step 'a' needs unknown step 'zz' (steps: a)"),
        ([{"name": "a"}, {"name": "a"}], "duplicate step name 'a'"),
    ],
)
async def test_bad_specs_are_refused_naming_the_problem(
    fleet: DevFleet, work: Path, steps: list[dict[str, Any]], wanted: str
) -> None:
    base = {"operation": {"op": "probe"}, "input": "file:///nowhere/in.mp4"}
    doc = {"workflow_id": "wf-bad", "steps": [{**base, **s} for s in steps]}
    res = await submit(work, doc)
    assert res.rc == 2 and wanted in res.err and res.err.count("\n") == 1, res
    # The API checks it too: a producer in any language gets the same answer.
    nc = await nats.connect(fleet.nats_url)
    try:
        body = json.dumps({"workflow": doc}).encode()
        reply = await nc.request(f"{fleet.prefix}.api.workflow.submit", body, timeout=10)
    finally:
        await nc.close()
    err = json.loads(reply.data)
    assert err["code"] == 400 and wanted in err["message"], err
    res = await run_cli("workflow", "status", "wf-bad")
    assert res.rc == 4 and "no workflow 'wf-bad'" in res.err, res


async def test_a_step_that_fails_fails_the_workflow_and_cancels_its_dependents(
    fleet: DevFleet, media_dir: Path, work: Path
) -> None:
    missing = (media_dir / "wf-not-there.mp4").as_uri()
    out = work / "out" / "wf-fail"
    doc = {
        "workflow_id": "wf-fail",
        "tenant": "acme",
        "steps": [
            {"name": "probe", "operation": {"op": "probe"}, "input": missing, "max_attempts": 1},
            {
                "name": "transcode", "needs": ["probe"], "input": missing,
                "output": (out / "x.mp4").as_uri(), "operation": {"op": "transcode"},
            },
        ],
    }  # fmt: skip
    assert (await submit(work, doc)).rc == 0
    info = await until_info(fleet, "wf-fail", ended)
    assert info.state == "failed", info
    assert info.error is not None and info.error.startswith("step 'probe' failed: "), info
    states = {s.name: (s.state, s.job_state) for s in info.steps}
    assert states == {"probe": ("failed", "failed"), "transcode": ("cancelled", None)}, states
    res = await run_cli("workflow", "status", "wf-fail", "--json")
    assert res.rc == 0 and json.loads(res.out)["state"] == "failed", res
