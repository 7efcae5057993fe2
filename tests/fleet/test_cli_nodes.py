"""The node commands against a real two-daemon dev fleet: `nodes` (table and JSON), `drain`
(with --wait and --timeout), `resume`, and their errors (unknown node, unreachable NATS)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest_asyncio

from control.cli.nodewait import DrainWatch, drained
from control.devstack.fleet import DevFleet
from control.devstack.stack import free_ports
from daemon.ffmpeg.tools import FfmpegTools
from schemas import api
from tests.support.devfleet import CliResult, dev_fleet, open_dir, run_cli
from tests.support.fleetjobs import (
    nats_of,
    slots_of,
    submit,
    transcode,
    until_running,
    wait_finished,
)
from tests.support.heldmedia import HeldMedia, held_media, node_settings
from tests.support.media import make_clip
from tests.support.noderecords import node_record

NODES = ["dev-1", "dev-2"]
#: Slots per node, fixed so the held jobs that fill the fleet are few on any machine.
SLOTS = 2


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-clinodes-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def src(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "nodes.mp4", seconds=8)


@pytest_asyncio.fixture(scope="module")
async def media(src: Path) -> AsyncIterator[HeldMedia]:
    async with held_media(src) as m:
        yield m


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path, media: HeldMedia) -> AsyncIterator[DevFleet]:
    settings = node_settings(slots=SLOTS)
    async with dev_fleet(work, len(NODES), roots=[media_dir, work], node_settings=settings) as f:
        yield f


def one_error_line(res: CliResult, code: int) -> str:
    assert res.rc == code, res
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flotilla: error: "), res.err
    return lines[0]


async def states(**expect: str) -> dict[str, str]:
    """`nodes --json` until each node has the expected state (dev_1="online" for dev-1)."""
    want = {k.replace("_", "-"): v for k, v in expect.items()}
    got: dict[str, str] = {}
    for _ in range(60):
        res = await run_cli("nodes", "--json")
        assert res.rc == 0, res
        got = {n["node_id"]: n["state"] for n in json.loads(res.out)["nodes"]}
        if all(got.get(k) == v for k, v in want.items()):
            return got
        await asyncio.sleep(0.5)
    raise AssertionError(f"nodes stayed {got}, expected {want}")


async def test_nodes_table_and_json(fleet: DevFleet) -> None:
    res = await run_cli("nodes")
    assert res.rc == 0, res
    header, *rows = res.out.splitlines()
    assert header.split()[:3] == ["NODE", "STATE", "POOLS"] and "LAST SEEN" in header
    assert [r.split()[:2] for r in rows] == [["dev-1", "online"], ["dev-2", "online"]]
    assert all("cpu:" in r and "libx264" in r for r in rows), res.out
    doc = json.loads((await run_cli("nodes", "--json")).out)
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert sorted(nodes) == ["dev-1", "dev-2"]
    one = nodes["dev-1"]
    assert one["state"] == "online" and "cpu" in one["pools"] and one["slots"]["cpu"] >= 1
    assert "libx264" in one["verified_encoders"] and one["heartbeat"]["node_id"] == "dev-1"


async def test_drain_wait_timeout_then_resume(
    fleet: DevFleet, media: HeldMedia, src: Path, work: Path
) -> None:
    nc = await nats_of(fleet)
    # As many held jobs as the fleet has slots: once all run, every node runs some (counted,
    # not timed), and none can finish before it is released.
    slots = await slots_of(fleet, NODES)
    assert slots == dict.fromkeys(NODES, SLOTS), slots
    first = {f"nd-{i}" for i in range(sum(slots.values()))}
    try:
        for job_id in sorted(first):
            await submit(nc, fleet, media.transcode(job_id, work / "out"))
        on = await until_running(fleet, first, 180.0)
        assert {n: len(on.get(n, ())) for n in NODES} == slots, on
        # A timeout shorter than the running jobs: exit 1, one line, the node stays draining.
        # (dev-1 runs held jobs, so it cannot be drained before they are released.)
        res = await run_cli("drain", "dev-1", "--wait", "--timeout", "0.5")
        line = one_error_line(res, 1)
        assert "dev-1 still " in line and "--timeout" in line, line
        assert res.out.startswith("dev-1: draining\n"), res.out
        assert on["dev-1"] <= set(media.holding), (on, media.holding)
        media.release(first)
        res = await run_cli("drain", "dev-1", "--wait", "--timeout", "180")
        assert res.rc == 0, res
        # Off a TTY the wait prints plain lines, the last one the verdict.
        assert res.out.splitlines()[-1] == "dev-1: drained, no job running", res.out
        assert "\r" not in res.out
        await states(dev_1="draining", dev_2="online")
        # Drained dev-1 takes nothing new: the next jobs all run on dev-2.
        later = {f"nd-later-{i}" for i in range(2)}
        for job_id in sorted(later):
            await submit(nc, fleet, transcode(job_id, src, work / "out"))
        infos = await wait_finished(fleet, first | later)
        assert {infos[j].node_id for j in later} == {"dev-2"}, infos
        # Resumed, dev-1 pulls again: with dev-2 drained, a new job can only run there.
        res = await run_cli("resume", "dev-1")
        assert res.rc == 0 and res.out.startswith("dev-1: "), res
        assert (await run_cli("drain", "dev-2")).rc == 0
        await states(dev_1="online", dev_2="draining")
        await submit(nc, fleet, transcode("nd-after-resume", src, work / "out"))
        infos = await wait_finished(fleet, {"nd-after-resume"})
        assert infos["nd-after-resume"].node_id == "dev-1"
        assert all(i.state == "completed" for i in infos.values())
    finally:
        media.release(first)
        await run_cli("resume", "dev-2")
        await run_cli("resume", "dev-1")
        await nc.close()
    await states(dev_1="online", dev_2="online")


async def test_unknown_node_is_exit_4(fleet: DevFleet) -> None:
    for verb in ("drain", "resume"):
        line = one_error_line(await run_cli(verb, "no-such-node"), 4)
        assert "no-such-node" in line and "dev-1" in line, line


async def test_unreachable_nats_is_exit_3(fleet: DevFleet) -> None:
    (port,) = free_ports(1)
    url = f"nats://127.0.0.1:{port}"
    for argv in (("nodes",), ("drain", "dev-1", "--wait"), ("resume", "dev-1")):
        line = one_error_line(await run_cli(*argv, "--nats-url", url), 3)
        assert "cannot reach" in line, line


def test_drained_needs_every_slot_back() -> None:
    rec = node_record("n1")
    hb = msgspec.structs.replace(rec.heartbeat, state="draining", slots={"cpu": 2})

    def info(**over: object) -> api.NodeInfo:
        beat = msgspec.structs.replace(hb, **over)
        return api.NodeInfo(node_id="n1", state=beat.state, heartbeat=beat)

    assert drained(info(free_slots={"cpu": 2}))
    # A fetch still in flight holds its reserved slots: a job may yet arrive.
    assert not drained(info(free_slots={"cpu": 0}))
    assert not drained(info(free_slots={"cpu": 2}, running_jobs=["j"]))
    assert not drained(info(free_slots={"cpu": 2}, state="online"))


def test_drain_watch_rewrites_one_line_on_a_tty() -> None:
    out = io.StringIO()
    watch = DrainWatch("n1", out, tty=True)
    watch.show("draining, 1 running: j")
    watch.show("draining, 1 running: j")  # unchanged: not written again
    watch.done("n1: drained")
    assert out.getvalue() == "\r\x1b[2Kn1: draining, 1 running: j\r\x1b[2Kn1: drained\n"
    plain = io.StringIO()
    watch = DrainWatch("n1", plain, tty=False)
    watch.show("a")
    watch.show("b")
    watch.done("n1: drained")
    assert plain.getvalue() == "n1: a\nn1: b\nn1: drained\n"
