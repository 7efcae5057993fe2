"""Earliest deadline first on a real dev fleet: one node with one slot, real ffmpeg jobs whose
inputs are held (tests.support.heldmedia), so each start is seen one at a time. Jobs submitted
with deadlines +3 h, +1 h, +2 h start in deadline order, behind only what the leader had
released into the due lane before they came; a job without a deadline waits in the plain lane
behind them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from common.natsconn import NatsSettings
from control.cli.apiclient import ApiClient
from control.devstack.fleet import DevFleet
from daemon.ffmpeg.tools import FfmpegTools
from schemas import api
from schemas.jobs import JobSpec
from schemas.subjects import Subjects
from tests.support.devfleet import dev_fleet, open_dir
from tests.support.fleetjobs import nats_of, node_list, until_running
from tests.support.heldmedia import HeldMedia, held_media, node_settings
from tests.support.media import make_clip

WITHIN = 300.0
#: control.toml's default deadline_release_margin: what the due lane holds with no slot free.
MARGIN = 2


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-edf-") as path:
        yield path


@pytest.fixture(scope="module")
def roots(work: Path) -> Path:
    (work / "media").mkdir()
    return (work / "media").resolve()


@pytest_asyncio.fixture(scope="module")
async def media(ffmpeg_tools: FfmpegTools, roots: Path) -> AsyncIterator[HeldMedia]:
    src = await make_clip(ffmpeg_tools.ffmpeg, roots / "src.mp4", seconds=1.0, size="160x90")
    async with held_media(src) as m:
        yield m


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, roots: Path, media: HeldMedia) -> AsyncIterator[DevFleet]:
    async with dev_fleet(work, 1, roots=[roots], node_settings=node_settings(slots=1)) as f:
        yield f


async def submit(
    c: ApiClient, media: HeldMedia, roots: Path, job_id: str, hours: float | None
) -> None:
    doc = media.transcode(job_id, roots)
    if hours is not None:
        doc["deadline"] = (datetime.now(UTC) + timedelta(hours=hours)).isoformat()
    spec = msgspec.convert(doc, JobSpec)
    reply = await c.call("job.submit", api.SubmitRequest(job=spec), api.SubmitReply)
    held = ".timed." in reply.subject
    assert held == (hours is not None), reply  # the API holds exactly the deadline jobs


async def until_slot_taken(fleet: DevFleet) -> None:
    """Until the node's heartbeat, as the control plane holds it, says its one slot is taken:
    from then on the leader keeps only MARGIN jobs in the due lane."""
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        beats = [n.heartbeat for n in await node_list(fleet) if n.heartbeat is not None]
        if beats and all(b.free_slots.get("cpu", 0) == 0 for b in beats):
            return
        await asyncio.sleep(0.25)
    raise AssertionError("the node's heartbeat never showed its slot taken")


async def until_due(fleet: DevFleet, n: int) -> None:
    subjects = Subjects(fleet.prefix)
    nc = await nats_of(fleet)
    try:
        js = nc.jetstream(timeout=5)
        deadline = time.monotonic() + WITHIN
        pending = -1
        while time.monotonic() < deadline:
            info = await js.consumer_info(
                subjects.jobs_stream, subjects.due_consumer("cpu", "normal")
            )
            pending = info.num_pending or 0
            if pending == n:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"the due lane held {pending}, not {n}")
    finally:
        await nc.close()


async def next_start(media: HeldMedia, seen: set[str]) -> str:
    """The next job to ask for its input (its start), held there until released."""
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        new = [j for j, n in media.holding.items() if n and j not in seen]
        if new:
            assert len(new) == 1, new  # one slot: one job at a time
            return new[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no job started after {sorted(seen)}")


async def test_earlier_deadlines_start_first_within_a_priority(
    fleet: DevFleet, media: HeldMedia, roots: Path
) -> None:
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as c:
        await submit(c, media, roots, "blocker", None)
        await until_running(fleet, {"blocker"}, WITHIN)
        await until_slot_taken(fleet)
        # The due lane fills to MARGIN with the first deadline jobs, whatever their deadlines.
        await submit(c, media, roots, "early-1", 20)
        await submit(c, media, roots, "early-2", 21)
        await until_due(fleet, MARGIN)
        await submit(c, media, roots, "plain", None)
        for job_id, hours in (("d3", 3), ("d1", 1), ("d2", 2)):
            await submit(c, media, roots, job_id, hours)
        seen = {"blocker"}
        order: list[str] = []
        media.release(["blocker"])
        for _ in range(6):
            job_id = await next_start(media, seen)
            seen.add(job_id)
            order.append(job_id)
            media.release([job_id])
    # Submit order was early-1, early-2, plain, d3, d1, d2: FIFO would run them so.
    assert order == ["early-1", "early-2", "d1", "d2", "d3", "plain"], order
