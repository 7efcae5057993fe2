"""The zero-loss rolling upgrade, for real: three daemons running transcodes, each drained,
restarted and resumed in turn by the same CLI steps `ansible/rolling-upgrade.yml` runs, then a
crash-restart (SIGKILL, no drain). Every job must complete, and complete exactly once.

Two of the three daemons start on the previous release (support.release), beside this release's
control plane and third daemon, and are upgraded by the restart step: jobs of two tenants flow
through a mixed-version fleet, and each old node's journal is taken over by the new release.

The steps are read from the playbook itself, so the test breaks if the playbook and the CLI
drift apart.

Jobs are running on a node when it is drained or killed by construction, not by speed: held jobs
(support.heldmedia) cannot finish until the test releases them. As many of them as the fleet has
slots fill every node once all run, since no node runs more jobs than it has slots.
"""

from __future__ import annotations

import asyncio
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
from nats.aio.client import Client as NATS

from control.devstack.fleet import DevFleet
from daemon.ffmpeg.tools import FfmpegTools
from schemas.common import PROTOCOL
from tests.support.devfleet import CliResult, open_dir, run_cli, wait_nodes
from tests.support.fleetjobs import (
    Tally,
    nats_of,
    node_list,
    running_on,
    slots_of,
    submit,
    tally,
    transcode,
    until_accepted,
    until_running,
    until_state,
    wait_finished,
)
from tests.support.heldmedia import HeldMedia, held_media, node_settings
from tests.support.media import make_clip
from tests.support.release import extract_release

PLAYBOOK = Path(__file__).resolve().parents[2] / "ansible" / "rolling-upgrade.yml"
NODES = ["dev-1", "dev-2", "dev-3"]
#: Nodes that start on the previous release (protocol 1) and are upgraded by the roll.
OLD_NODES = ["dev-2", "dev-3"]
TENANTS = ("acme", "bravo")
#: Slots per node, fixed so the held jobs that fill the fleet are few on any machine.
SLOTS = 2
DRAIN_TIMEOUT_S = 240
#: Short, so a crashed node's jobs come back in seconds rather than a minute.
ACK_WAIT_S = 10.0
RETRIES, RETRY_DELAY_S = 60, 1.0
#: Bounds on waits that only a failure reaches.
FILL_LIMIT_S, STATE_LIMIT_S, FINISH_LIMIT_S = 300.0, 120.0, 300.0
_WAITED = re.compile(r": draining, \d+ running: (.+)$", re.MULTILINE)


@dataclass(frozen=True)
class Step:
    name: str
    argv: list[str]  # CLI arguments after the program; empty for the restart
    until: str | None


def playbook_steps(node: str) -> list[Step]:
    """The per-node tasks of the playbook, in order, with the node and timeout filled in."""
    *_, play = yaml.safe_load(PLAYBOOK.read_text())  # the upgrade play (the first reads vars)
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
        fleet.node_release.pop(node, None)  # the new release's package, then the restart
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


async def drain_releasing(
    fleet: DevFleet, media: HeldMedia, node: str, step: Step, held: set[str]
) -> CliResult:
    """The drain step, run while `node` runs the `held` jobs; they are released once the drain
    is under way (the node reports `draining`), so they finish on that node during the drain."""
    drain = asyncio.create_task(run_step(fleet, node, step))
    try:
        await until_state(fleet, node, "draining", STATE_LIMIT_S)
        if drain.done():  # it cannot have waited: the held jobs are still running there
            raise AssertionError(f"drain --wait ended before {sorted(held)} were released: "
                                 f"{drain.exception() or drain.result()}")  # fmt: skip
        media.release(held)
        res = await drain
    finally:
        if not drain.done():
            drain.cancel()
            await asyncio.gather(drain, return_exceptions=True)
    assert res is not None
    return res


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-roll-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def media(src: Path) -> AsyncIterator[HeldMedia]:
    async with held_media(src) as m:
        yield m


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path, media: HeldMedia) -> AsyncIterator[DevFleet]:
    """Three daemons (as support.devfleet.dev_fleet, short ack wait), taking held inputs; those
    of OLD_NODES run the previous release."""
    previous = await extract_release(work / "previous")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLOTILLA_CONTEXT", str(work / "context.json"))
        f = DevFleet(
            work / "fleet",
            nodes=len(NODES),
            roots=[media_dir, work],
            ack_wait=ACK_WAIT_S,
            node_settings=node_settings(slots=SLOTS),
            node_release=dict.fromkeys(OLD_NODES, previous),
        )
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


async def held_ids(fleet: DevFleet, prefix: str) -> set[str]:
    """Ids for as many held jobs as the fleet has slots (fixed at `SLOTS` a node; checked)."""
    slots = await slots_of(fleet, NODES)
    assert slots == dict.fromkeys(NODES, SLOTS), slots
    return {f"{prefix}-{i:02d}" for i in range(sum(slots.values()))}


async def fill_with_held(
    fleet: DevFleet, media: HeldMedia, nc: NATS, held: set[str], out: Path
) -> dict[str, set[str]]:
    """Submit the held jobs and wait until all run; node id -> its held jobs. As many as the
    fleet has slots, and no node runs more jobs than slots: so each node runs `SLOTS` of them,
    until they are released."""
    for job_id in sorted(held):
        await submit(nc, fleet, media.transcode(job_id, out))
    on = await until_running(fleet, held, FILL_LIMIT_S)
    assert {n: len(on.get(n, ())) for n in NODES} == dict.fromkeys(NODES, SLOTS), on
    return on


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_rolling_upgrade_loses_nothing(
    fleet: DevFleet, media: HeldMedia, src: Path, work: Path
) -> None:
    nc = await nats_of(fleet)
    held = await held_ids(fleet, "roll-held")
    job_ids = set(held)

    tenant_of: dict[str, str] = {}

    async def add(job_id: str) -> None:
        job_ids.add(job_id)
        tenant_of[job_id] = TENANTS[len(job_ids) % 2]
        spec = transcode(job_id, src, work / "out")
        await submit(nc, fleet, {**spec, "tenant": tenant_of[job_id]})

    async def protocols() -> dict[str, int]:
        return {
            n.node_id: n.capabilities.protocol for n in await node_list(fleet) if n.capabilities
        }

    try:
        old = {n: 1 if n in OLD_NODES else PROTOCOL for n in NODES}
        assert await protocols() == old  # two releases side by side, for real
        for i in range(12):
            await add(f"roll-{i:02d}")
        holds = await fill_with_held(fleet, media, nc, held, work / "out")
        at_drain: dict[str, set[str]] = {}
        drain_out: dict[str, str] = {}
        late = 0
        started = time.monotonic()
        for node in NODES:
            # The node still runs its held jobs: they must finish there, not be lost.
            at_drain[node] = set((await running_on(fleet)).get(node, []))
            assert holds[node] <= at_drain[node], (node, holds, at_drain)
            for step in playbook_steps(node):
                # Work keeps arriving while nodes are drained and restarted.
                await add(f"roll-late-{late:02d}")
                late += 1
                if step.argv[:1] == ["drain"]:
                    res = await drain_releasing(fleet, media, node, step, holds[node])
                    drain_out[node] = res.out
                    at_drain[node] |= set(waited_on(res.out))
                else:
                    await run_step(fleet, node, step)
        roll_s = time.monotonic() - started
        assert all(media.released(j) for j in held)
        infos = await wait_finished(fleet, job_ids, limit_s=FINISH_LIMIT_S)
        assert await protocols() == dict.fromkeys(NODES, PROTOCOL)
        t = await tally(nc, fleet, job_ids)
    finally:
        media.release(held)
        await nc.close()
    print(f"\nroll took {roll_s:.0f}s for {len(job_ids)} jobs; completed per node {t.per_node()}")
    print(
        f"running at drain {at_drain}; redelivered {t.redelivered()}; interrupted {t.interrupted}"
    )
    print("drain --wait printed:", drain_out)
    check_exactly_once(t, job_ids, infos)
    # Old nodes name the tenant only in `accepted`: the control plane still files every event
    # of theirs under the job's own tenant (under another, the job would not read completed).
    assert {j: infos[j].tenant for j in tenant_of} == tenant_of
    # A drain lets running jobs finish where they are: nothing was interrupted or handed over.
    assert not t.interrupted, t.interrupted
    assert all(at_drain.values()), at_drain
    for node, jobs in at_drain.items():
        assert all(t.completed_on[j] == [node] for j in jobs), (node, jobs, t.completed_on)
    assert all("drained" in out or "left the fleet" in out for out in drain_out.values())


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_crash_restart_without_drain_completes_every_job_once(
    fleet: DevFleet, media: HeldMedia, src: Path, work: Path
) -> None:
    await wait_nodes(fleet, len(NODES))
    nc = await nats_of(fleet)
    held = await held_ids(fleet, "crash-held")
    plain = {f"crash-{i:02d}" for i in range(9)}
    job_ids = held | plain
    try:
        holds = await fill_with_held(fleet, media, nc, held, work / "out")
        for job_id in sorted(plain):
            await submit(nc, fleet, transcode(job_id, src, work / "out"))
        victims = sorted(holds["dev-2"])
        # Their `accepted` events are out before the kill, so each counts as redelivered later.
        await until_accepted(nc, fleet, held, STATE_LIMIT_S)
        await fleet.restart_node("dev-2", crash=True)
        media.release(held)
        infos = await wait_finished(fleet, job_ids, limit_s=FINISH_LIMIT_S)
        t = await tally(nc, fleet, job_ids)
    finally:
        media.release(held)
        await nc.close()
    print(f"\nkilled dev-2 running {victims}; completed per node {t.per_node()}")
    print(f"redelivered {t.redelivered()}; interrupted {dict(t.interrupted)}; failed {t.failed}")
    check_exactly_once(t, job_ids, infos)
    # The kill really hit running jobs: the restarted daemon's journal reports them interrupted.
    assert set(t.interrupted) | set(t.redelivered()), "the crash interrupted nothing"
    # Every job it hit was running on dev-2 and finished after the kill: delivered again.
    assert set(victims) <= set(t.redelivered()), (victims, t.redelivered())
