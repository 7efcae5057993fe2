"""A chunked encode on a real dev fleet of three nodes: `flotilla chunked submit` expands a
three-minute title into a workflow, the nodes encode the chunks and the audio as ordinary jobs,
the join verifies, and the joined file holds every source frame with its audio. A node killed
while it holds two of the chunk steps costs those two a second run, and nothing else runs
twice."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from common.natsconn import NatsSettings
from control.cli.apiclient import ApiClient
from control.devstack.fleet import DevFleet
from daemon.ffmpeg.tools import FfmpegTools
from schemas import api
from schemas.workflows import WorkflowInfo, WorkflowRef
from tests.support.devfleet import dev_fleet, open_dir, run_cli
from tests.support.fleetjobs import slots_of, until_running
from tests.support.heldmedia import HeldMedia, held_media, node_settings
from tests.support.media import make_clip, run_ffmpeg
from tests.support.probing import ffmpeg_output

FPS = 25
SLOTS = 2
NODES = ["dev-1", "dev-2", "dev-3"]
#: The long title: three minutes, tiny frames, so encoding it stays cheap.
LONG_S = 180
#: The held title: five 2 s chunks and the audio fill the three nodes' six slots exactly.
HELD_S = 10


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-chunked-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def src(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """3 min, 160x120, 25 fps: three 60 s chunks of 1,500 frames."""
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "chunked-src.mp4", seconds=LONG_S,
                           size="160x120", fps=FPS)  # fmt: skip


@pytest_asyncio.fixture(scope="module")
async def media(ffmpeg_tools: FfmpegTools, media_dir: Path) -> AsyncIterator[HeldMedia]:
    held = await make_clip(ffmpeg_tools.ffmpeg, media_dir / "chunked-held.mp4", seconds=HELD_S,
                           size="160x120", fps=FPS)  # fmt: skip
    async with held_media(held) as m:
        yield m


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path, media: HeldMedia) -> AsyncIterator[DevFleet]:
    # Two slots a node: the five chunks and the audio, held, fill the three nodes exactly. A
    # short ack wait: a killed node's jobs come back in seconds.
    settings = node_settings(slots=SLOTS)
    roots = [media_dir, work / "out"]
    async with dev_fleet(work, len(NODES), roots=roots, node_settings=settings,
                         ack_wait=10.0) as f:  # fmt: skip
        yield f


def client(fleet: DevFleet) -> ApiClient:
    return ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix))


async def until_ended(fleet: DevFleet, workflow_id: str, limit_s: float = 300) -> WorkflowInfo:
    """Poll workflow.get until the workflow and its steps ended (bounded: shown if stuck)."""
    deadline = time.monotonic() + limit_s
    info: WorkflowInfo | None = None
    async with client(fleet) as c:
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                ref = WorkflowRef(workflow_id=workflow_id)
                info = await c.call("workflow.get", ref, WorkflowInfo)
                if info.state != "running" and all(s.state != "submitted" for s in info.steps):
                    return info
            await asyncio.sleep(0.2)
    raise AssertionError(f"workflow {workflow_id} did not end: {info}")


async def _frames(tools: FfmpegTools, path: Path) -> int:
    out = path.with_suffix(".frames")
    code, err = await run_ffmpeg(tools.ffmpeg, "-loglevel", "error", "-y", "-i", str(path),
                                 "-map", "0:v:0", "-f", "framecrc", str(out))  # fmt: skip
    assert code == 0, err.decode(errors="replace")
    text = await asyncio.to_thread(out.read_text)
    return sum(1 for line in text.splitlines() if line.startswith("0,"))


@pytest.mark.timeout(420)
async def test_a_chunked_encode_runs_on_the_fleet_and_joins_every_frame(
    fleet: DevFleet, ffmpeg_tools: FfmpegTools, src: Path, work: Path
) -> None:
    out = work / "out" / "chunked"
    await asyncio.to_thread(out.mkdir, parents=True)
    res = await run_cli(
        "chunked", "submit", str(src), str(out / "film.mp4"), "--duration", str(LONG_S),
        "--chunk-seconds", "60", "--preset", "ultrafast", "--crf", "30", "--gop-size", "25",
        "--workflow-id", "film-1", "--tenant", "acme",
    )  # fmt: skip
    assert res.rc == 0 and res.out.strip() == "film-1", res
    info = await until_ended(fleet, "film-1")
    assert info.state == "completed", info
    assert [s.name for s in info.steps] == ["c00", "c01", "c02", "audio", "join"]
    async with client(fleet) as c:
        ref = api.JobRef(job_id="film-1--join", tenant="acme")
        join = await c.call("job.get", ref, api.JobInfo)
    assert join.result is not None and join.result.concat is not None
    report = join.result.concat
    assert report.chunk_frames == [60 * FPS] * 3 and report.frames == LONG_S * FPS
    assert report.av_drift_ms is not None and report.av_drift_ms <= 100
    assert all(b.keyframe for b in report.borders)
    assert await _frames(ffmpeg_tools, out / "film.mp4") == LONG_S * FPS
    # The joined file lasts as long as the title, audio included.
    _, banner = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(out / "film.mp4"))
    [(h, m, sec)] = re.findall(r"Duration: (\d+):(\d+):([\d.]+)", banner)
    assert abs(int(h) * 3600 + int(m) * 60 + float(sec) - LONG_S) < 0.1, banner
    # Followed like any workflow: the status names each chunk's job.
    status = await run_cli("workflow", "status", "film-1", "--tenant", "acme", "--json")
    assert status.rc == 0 and json.loads(status.out)["state"] == "completed", status


async def _kinds(c: ApiClient, job_id: str) -> list[str]:
    ref = api.JobRef(job_id=job_id, tenant="acme")
    return [e.kind for e in (await c.call("job.events", ref, api.JobEventsReply)).events]


@pytest.mark.timeout(420)
async def test_a_lost_node_costs_only_its_chunks_a_second_run(
    fleet: DevFleet, ffmpeg_tools: FfmpegTools, media: HeldMedia, work: Path
) -> None:
    assert await slots_of(fleet, NODES) == dict.fromkeys(NODES, SLOTS)
    out = work / "out" / "lost"
    await asyncio.to_thread(out.mkdir, parents=True)
    # Every chunk and the audio read the held input: all six run, two a node, until released.
    res = await run_cli(
        "chunked", "submit", media.url("film"), str(out / "film.mp4"), "--duration", str(HELD_S),
        "--chunk-seconds", "2", "--preset", "ultrafast", "--crf", "30", "--gop-size", "25",
        "--workflow-id", "film-2", "--tenant", "acme",
    )  # fmt: skip
    assert res.rc == 0, res
    steps = {f"film-2--{n}" for n in ("c00", "c01", "c02", "c03", "c04", "audio")}
    on = await until_running(fleet, steps, 120)
    assert {n: len(on.get(n, ())) for n in NODES} == dict.fromkeys(NODES, SLOTS), on
    lost = on["dev-2"]
    await fleet.restart_node("dev-2", crash=True)
    media.release(["film"])
    info = await until_ended(fleet, "film-2")
    assert info.state == "completed", info
    async with client(fleet) as c:
        kinds = {job_id: await _kinds(c, job_id) for job_id in [*steps, "film-2--join"]}
        join = await c.call("job.get", api.JobRef(job_id="film-2--join", tenant="acme"),
                            api.JobInfo)  # fmt: skip
    # Each step completed once; only the killed node's two ran again (accepted twice).
    assert {j: k.count("completed") for j, k in kinds.items()} == dict.fromkeys(kinds, 1), kinds
    again = {j for j, k in kinds.items() if k.count("accepted") > 1}
    assert again == lost, (lost, kinds)
    assert join.result is not None and join.result.concat is not None
    assert join.result.concat.frames == HELD_S * FPS
    assert await _frames(ffmpeg_tools, out / "film.mp4") == HELD_S * FPS
