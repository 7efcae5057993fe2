"""Run a profile: start a dev fleet, stream jobs, inject each fault in turn, settle, audit.

Two stages, each its own fleet: `single` (one nats-server; every fault but leader kills) and,
when the profile has leader kills, `cluster` (three nats-servers, streams at R3). Everything the
runner starts is stopped in `finally`, by PID; the tmpfs is unmounted after its daemon stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.natsconn import connect
from control.devstack.chaos import audit, diskfill
from control.devstack.chaos.audit import PhaseTally
from control.devstack.chaos.eventlog import EventLog
from control.devstack.chaos.faults import (
    ControlKill,
    Ctx,
    DaemonKill,
    DiskFull,
    Fault,
    LeaderKill,
    NatsRestart,
    NetworkCut,
    PostgresOutage,
    wait_api,
)
from control.devstack.chaos.ledger import Episode, Ledger
from control.devstack.chaos.profiles import Profile
from control.devstack.chaos.proxy import TcpProxy
from control.devstack.chaos.storm import storm
from control.devstack.chaos.table import Report
from control.devstack.chaos.workload import Clips, Submitter, Trickle, make_clips
from control.devstack.fleet import DevFleet, NodeSettings
from control.devstack.nats import NatsServer
from daemon.ffmpeg.tools import find_tools
from schemas.subjects import Subjects

Progress = Callable[[str], None]
#: Bounds: one episode, the gap after it, the fleet coming up, ingest catching up.
EPISODE_LIMIT_S = 300.0
GAP_S = 2.0
START_LIMIT_S = 180.0
INGEST_LIMIT_S = 180.0
POLL_S = 2.0


class MalformedStorm(Fault):
    """`count` malformed messages to the submit and events subjects in one burst."""

    phase = "malformed"

    def __init__(self, count: int) -> None:
        self.count = count

    async def episode(self, ctx: Ctx) -> Episode:
        ep = Episode(self.phase, "submit+events subjects", time.time())
        nc = await connect(ctx.settings, name="flotilla-chaos-storm", reconnect=False)
        try:
            await storm(nc, ctx.fleet.prefix, self.count, ctx.rng, ctx.ledger.storm)
        finally:
            await nc.close()
        ep.end = time.time()
        ep.note = f"{self.count} messages"
        return ep


def single_faults(p: Profile) -> list[tuple[Fault, int]]:
    plan: list[tuple[Fault, int]] = [
        (DaemonKill(), p.daemon_kills),
        (NatsRestart(signal.SIGTERM), p.nats_sigterm),
        (NatsRestart(signal.SIGKILL), p.nats_sigkill),
        (PostgresOutage(p.postgres_down_s), p.postgres_outages),
        (ControlKill(), p.control_kills),
        (NetworkCut(p.cut_s), p.network_cuts),
        (DiskFull(p.disk_full_s), p.disk_full),
        (MalformedStorm(p.malformed), 1 if p.malformed else 0),
    ]
    return [(f, n) for f, n in plan if n > 0]


@dataclass
class Stage:
    name: str
    faults: list[tuple[Fault, int]]
    nats_servers: int
    nodes: int
    proxy: bool
    disk: bool


async def run(profile: Profile, seed: int, work: Path, progress: Progress) -> Report:
    """Run every stage of `profile` under `work` (an empty directory others may enter)."""
    started = time.monotonic()
    report = Report(profile.name, seed)
    rng = random.Random(seed)
    (work / "media").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    progress("making the test clips …")
    clips = await make_clips(find_tools().ffmpeg, work / "media")
    stages = [Stage("single", single_faults(profile), 1, profile.nodes, True, True)]
    if profile.leader_kills:
        stages.append(Stage("cluster", [(LeaderKill(), profile.leader_kills)], 3, 2, False, False))
    previous = os.environ.get("FLOTILLA_CONTEXT")
    os.environ["FLOTILLA_CONTEXT"] = str(work / "context.json")  # never the operator's own
    try:
        for stage in stages:
            await _stage(stage, profile, rng, work, clips, report, progress)
    finally:
        if previous is None:
            os.environ.pop("FLOTILLA_CONTEXT", None)
        else:
            os.environ["FLOTILLA_CONTEXT"] = previous
    report.wall_s = time.monotonic() - started
    return report


async def _stage(
    stage: Stage,
    profile: Profile,
    rng: random.Random,
    work: Path,
    clips: Clips,
    report: Report,
    progress: Progress,
) -> None:
    data = work / stage.name
    nodes = [f"dev-{i}" for i in range(1, stage.nodes + 1)]
    cut_node, disk_node = nodes[-1], nodes[0]
    fleet: DevFleet | None = None
    proxy: TcpProxy | None = None
    mounted: Path | None = None

    def upstream() -> tuple[str, int]:
        assert fleet is not None and isinstance(fleet.stack.nats, NatsServer)
        return "127.0.0.1", fleet.stack.nats.port

    node_urls: dict[str, str] = {}
    if stage.proxy:
        proxy = TcpProxy(upstream)
        await proxy.start()
        node_urls[cut_node] = proxy.url
    fleet = DevFleet(
        data / "fleet",
        nodes=stage.nodes,
        roots=[work],
        ack_wait=profile.ack_wait,
        # One slot a node keeps a 2-core machine from drowning; a small watermark and frequent
        # checks let the tmpfs (diskfill) trip the disk guard while the real disk never does.
        node_settings=NodeSettings(
            slots={"cpu": 1},
            options={"disk_low_watermark_mb": diskfill.WATERMARK_MB, "disk_check_interval": 2.0},
        ),
        nats_servers=stage.nats_servers,
        node_nats_urls=node_urls,
    )
    disk_mode = ""
    if stage.disk:
        work_dir = fleet.state_dir(disk_node) / "work"
        if await diskfill.mount_tmpfs(work_dir):
            mounted, disk_mode = work_dir, "tmpfs"
        else:
            disk_mode = "watermark"
        report.disk_mode = disk_mode
    ctx = Ctx(fleet, Ledger(), rng, proxy, cut_node, disk_node, disk_mode or "tmpfs")
    submitter = Submitter(lambda: ctx.settings)
    out = work / "out" / stage.name
    out.mkdir(parents=True, exist_ok=True)
    trickle = Trickle(submitter, clips, out, f"c{seed_tag(rng)}-{stage.name}")
    try:
        progress(f"[{stage.name}] starting a dev fleet: {stage.nats_servers} nats-server(s), "
                 f"PostgreSQL, control plane, {stage.nodes} daemons …")  # fmt: skip
        await asyncio.wait_for(fleet.start(), START_LIMIT_S)
        if not await wait_api(ctx, online=stage.nodes, limit_s=START_LIMIT_S):
            raise RuntimeError(f"the {stage.name} fleet did not come online: {fleet.failed()}")
        for fault, count in stage.faults:
            await _phase(ctx, trickle, fault, count, profile, progress)
        await _heal(ctx, progress)
        progress(f"[{stage.name}] waiting for submissions to be confirmed …")
        await trickle.drain()
        await _settle(ctx, stage, profile, submitter, work, report, progress)
    finally:
        await submitter.close()
        progress(f"[{stage.name}] stopping the fleet …")
        with contextlib.suppress(Exception):
            await fleet.stop(grace=30.0)
        if proxy is not None:
            await proxy.stop()
        if mounted is not None:
            await diskfill.unmount(mounted)
        report.episodes += ctx.ledger.episodes
        if ctx.ledger.storm.published:
            report.storm = ctx.ledger.storm


def seed_tag(rng: random.Random) -> str:
    return f"{rng.randrange(16**6):06x}"


async def _phase(
    ctx: Ctx, trickle: Trickle, fault: Fault, count: int, profile: Profile, progress: Progress
) -> None:
    for i in range(count):
        for k in range(profile.jobs_per_episode):
            trickle.one(fault.phase, slow=k % 2 == 0)
        try:
            ep = await asyncio.wait_for(fault.episode(ctx), EPISODE_LIMIT_S)
        except TimeoutError:
            ep = Episode(fault.phase, "?", time.time(), time.time(), "episode timed out")
        ctx.ledger.episodes.append(ep)
        note = f" ({ep.note})" if ep.note else ""
        subs = trickle.submitter.submissions.values()
        waiting = [s for s in subs if not s.confirmed]
        last = next((s.error for s in reversed(waiting) if s.error), "")
        progress(
            f"  {fault.phase} {i + 1}/{count}: {ep.target}{note}; jobs confirmed "
            f"{len(subs) - len(waiting)}/{len(subs)}" + (f" (last error: {last})" if last else "")
        )
        await asyncio.sleep(GAP_S)
        await _heal(ctx, progress)


async def _heal(ctx: Ctx, progress: Progress) -> None:
    """Start again any service that exited on its own (a finding: it is noted in the output)."""
    for name, proc in list(ctx.fleet.procs.items()):
        if proc.returncode is not None:
            progress(f"  ! {name} exited by itself with {proc.returncode}; restarting it")
            ctx.ledger.episodes.append(
                Episode("self_exit", name, time.time(), time.time(), f"exit {proc.returncode}")
            )
            await ctx.fleet.restart_node(name)


async def _settle(
    ctx: Ctx,
    stage: Stage,
    profile: Profile,
    submitter: Submitter,
    work: Path,
    report: Report,
    progress: Progress,
) -> None:
    fleet = ctx.fleet
    subjects = Subjects(fleet.prefix)
    confirmed = {j for j, s in submitter.submissions.items() if s.confirmed}
    log = EventLog(subjects.events_stream, subjects.events_wildcard)
    nc = await connect(ctx.settings, name="flotilla-chaos-audit", reconnect=True)
    try:
        js = nc.jetstream(timeout=10)
        progress(f"[{stage.name}] settling: waiting for {len(confirmed)} jobs to end …")
        deadline = time.monotonic() + profile.settle_s
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                await log.catch_up(js)
            if confirmed <= log.ended():
                break
            await _heal(ctx, progress)
            await asyncio.sleep(POLL_S)
        if not await audit.wait_ingested(
            js, subjects.events_stream, subjects.ingest_consumer, INGEST_LIMIT_S
        ):
            progress(f"[{stage.name}] ! ingest still behind after {INGEST_LIMIT_S:.0f} s")
        await log.catch_up(js)
        queued, left = await audit.queued_job_ids(js, subjects.jobs_stream)
    finally:
        await nc.close()
    report.jobs_left[stage.name] = left
    report.stores[stage.name] = await audit.count_store(log, fleet.database_url)
    by_job = log.by_job()
    states = await audit.pg_job_states(fleet.database_url, sorted(submitter.submissions))
    kills = [e for e in ctx.ledger.episodes if e.phase == DaemonKill.phase]
    for fault, _ in stage.faults:
        tally = PhaseTally(fault.phase, episodes=len(ctx.ledger.of(fault.phase)))
        subs = [s for s in submitter.submissions.values() if s.phase == fault.phase]
        audit.classify(tally, subs, by_job, queued, states)
        if fault.phase == DaemonKill.phase:
            tally.latencies = audit.redelivery(kills, by_job)
        tally.notes = [f"{e.target}: {e.note}" for e in ctx.ledger.of(fault.phase) if e.note]
        report.phases.append(tally)
    exits = [e for e in ctx.ledger.episodes if e.phase == "self_exit"]
    if exits and report.phases:
        report.phases[-1].notes += [f"{e.target} exited by itself ({e.note})" for e in exits]
    report.partial_files += audit.partial_files(
        [work / "out" / stage.name, fleet.data_dir / "nodes"]
    )
