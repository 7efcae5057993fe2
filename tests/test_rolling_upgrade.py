"""The zero-loss rolling upgrade, for real: three daemons running transcodes, each drained,
restarted and resumed in turn by the same CLI steps `ansible/rolling-upgrade.yml` runs, then a
crash-restart (SIGKILL, no drain). Every job must complete, and complete exactly once.

The steps are read from the playbook itself, so the test breaks if the playbook and the CLI
drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml  # type: ignore[import-untyped]

from control.dev import DevFleet
from daemon.ffmpeg_bin import FfmpegTools
from tests.devfleet import CliResult, open_dir, run_cli, wait_nodes
from tests.fleetjobs import (
    Tally,
    nats_of,
    running_on,
    submit,
    tally,
    transcode,
    until_running_everywhere,
    wait_finished,
)
from tests.media import make_clip

PLAYBOOK = Path(__file__).resolve().parent.parent / "ansible" / "rolling-upgrade.yml"
NODES = ["dev-1", "dev-2", "dev-3"]
DRAIN_TIMEOUT_S = 240
#: Short, so a crashed node's jobs come back in seconds rather than a minute.
ACK_WAIT_S = 10.0
RETRIES, RETRY_DELAY_S = 60, 1.0
MAX_LATE_JOBS = 60
_WAITED = re.compile(r": draining, \d+ running: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]  # CLI arguments after the program; empty for the restart
    until: str | None


def playbook_steps(node: str) -> list[Step]:
    """The per-node tasks of the playbook, in order, with the node and timeout filled in."""
    (play,) = yaml.safe_load(PLAYBOOK.read_text())
    assert play["serial"] and "max_fail_percentage" in play
    fill = {"{{ _flotilla_node }}": node, "{{ _flotilla_drain_timeout }}": str(DRAIN_TIMEOUT_S)}
    steps = []
    for task in play["pre_tasks"] + play["post_tasks"]:
        if "ansible.builtin.command" in task:
            argv = task["ansible.builtin.command"]["argv"]
            assert argv[0] == "{{ _flotilla_cli }}", argv
            args = [fill.get(a, a) for a in argv[1:]]
            assert not any("{{" in a for a in args), f"unfilled template in {args}"
            steps.append(Step(task["name"], args, task.get("until")))
        else:
            systemd = task["ansible.builtin.systemd_service"]
            assert systemd["state"] == "restarted" and "daemon" in systemd["name"], task
            steps.append(Step(task["name"], [], None))
    return steps


def waited_on(drain_output: str) -> list[str]:
    """The job ids `drain --wait` said it was waiting for."""
    return [j for m in _WAITED.findall(drain_output) for j in m.removesuffix(" …").split(", ")]


def _ok(step: Step, node: str, res: CliResult) -> bool:
    if res.rc != 0:
        return False
    if step.until is not None and "'online'" in step.until:  # the `nodes --json` wait
        doc = json.loads(res.out)
        return any(n["node_id"] == node and n["state"] == "online" for n in doc["nodes"])
    return True


async def run_step(fleet: DevFleet, node: str, step: Step) -> CliResult | None:
    """One task as Ansible runs it: once, or retried while its `until` is false."""
    if not step.argv:
        await fleet.restart_node(node)
        return None
    res = await run_cli(*step.argv, limit_s=DRAIN_TIMEOUT_S + 60)
    for _ in range(RETRIES if step.until else 0):
        if _ok(step, node, res):
            break
        await asyncio.sleep(RETRY_DELAY_S)
        res = await run_cli(*step.argv)
    assert _ok(step, node, res), f"{step.name} on {node}: {res}"
    return res


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-roll-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path) -> AsyncIterator[DevFleet]:
    """Three daemons (as tests.devfleet.dev_fleet, with a short ack wait)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOTILLA_CONTEXT", str(work / "context.json"))
        f = DevFleet(work / "fleet", nodes=len(NODES), roots=[media_dir, work], ack_wait=ACK_WAIT_S)
        try:
            await f.start()
            await wait_nodes(f, len(NODES))
            yield f
        except AssertionError:
            for log in sorted((work / "fleet").glob("*.log")):
                text = await asyncio.to_thread(log.read_text, errors="replace")
                print(f"--- {log.name}\n{text[-3000:]}")
            raise
        finally:
            await f.stop(grace=30.0)


@pytest_asyncio.fixture(scope="module")
async def src(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "roll.mp4", seconds=16)


def check_exactly_once(t: Tally, job_ids: set[str], infos: dict[str, Any]) -> None:
    assert {j: i.state for j, i in infos.items() if i.state != "completed"} == {}
    assert set(t.completed) == job_ids, f"lost: {sorted(job_ids - set(t.completed))}"
    twice = {j: t.completed_on[j] for j, n in t.completed.items() if n > 1}
    assert twice == {}, f"completed more than once: {twice}"


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_rolling_upgrade_loses_nothing(fleet: DevFleet, src: Path, work: Path) -> None:
    nc = await nats_of(fleet)
    job_ids: set[str] = set()

    async def add(job_id: str) -> None:
        job_ids.add(job_id)
        await submit(nc, fleet, transcode(job_id, src, work / "out"))

    rolled = asyncio.Event()

    async def trickle() -> None:  # work keeps arriving while nodes are drained and restarted
        for i in range(MAX_LATE_JOBS):
            if rolled.is_set():
                return
            await add(f"roll-late-{i:02d}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(rolled.wait(), 2.0)

    feeder: asyncio.Task[None] | None = None
    try:
        for i in range(12):
            await add(f"roll-{i:02d}")
        await until_running_everywhere(fleet, NODES, 120.0)
        feeder = asyncio.create_task(trickle())
        held: dict[str, list[str]] = {}
        drain_out: dict[str, str] = {}
        started = time.monotonic()
        for node in NODES:
            # Drain each node while it runs jobs (they must finish there, not be lost).
            await until_running_everywhere(fleet, [node], 60.0)
            held[node] = list((await running_on(fleet)).get(node, []))
            for step in playbook_steps(node):
                res = await run_step(fleet, node, step)
                if res is not None and step.argv[0] == "drain":
                    drain_out[node] = res.out
                    held[node] += waited_on(res.out)
        roll_s = time.monotonic() - started
        rolled.set()
        await feeder
        infos = await wait_finished(fleet, job_ids, limit_s=300.0)
        t = await tally(nc, fleet, job_ids)
    finally:
        rolled.set()
        if feeder is not None:
            await asyncio.gather(feeder, return_exceptions=True)
        await nc.close()
    print(f"\nroll took {roll_s:.0f}s for {len(job_ids)} jobs; completed per node {t.per_node()}")
    print(f"running at drain {held}; redelivered {t.redelivered()}; interrupted {t.interrupted}")
    print("drain --wait printed:", drain_out)
    check_exactly_once(t, job_ids, infos)
    # A drain lets running jobs finish where they are: nothing was interrupted or handed over.
    assert not t.interrupted, t.interrupted
    assert all(held.values()), held
    for node, jobs in held.items():
        assert all(t.completed_on[j] == [node] for j in jobs), (node, jobs, t.completed_on)
    assert all("drained" in out or "left the fleet" in out for out in drain_out.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_crash_restart_without_drain_completes_every_job_once(
    fleet: DevFleet, src: Path, work: Path
) -> None:
    await wait_nodes(fleet, len(NODES))
    nc = await nats_of(fleet)
    job_ids = {f"crash-{i:02d}" for i in range(9)}
    try:
        for job_id in sorted(job_ids):
            await submit(nc, fleet, transcode(job_id, src, work / "out"))
        await until_running_everywhere(fleet, ["dev-2"], 120.0)
        victims = (await running_on(fleet))["dev-2"]
        await fleet.restart_node("dev-2", crash=True)
        infos = await wait_finished(fleet, job_ids, limit_s=300.0)
        t = await tally(nc, fleet, job_ids)
    finally:
        await nc.close()
    print(f"\nkilled dev-2 running {victims}; completed per node {t.per_node()}")
    print(f"redelivered {t.redelivered()}; interrupted {dict(t.interrupted)}; failed {t.failed}")
    check_exactly_once(t, job_ids, infos)
    # The kill really hit running jobs: the restarted daemon's journal reports them interrupted.
    assert set(t.interrupted) | set(t.redelivered()), "the crash interrupted nothing"
