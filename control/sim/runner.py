"""Run a scenario: the stack, the seeded table, the simulator processes, the traffic, the deaths,
then settle, audit and report. Everything started here is stopped in `finally`, by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil

from common.looplag import watch_loop_lag
from common.natsconn import NatsSettings, connect
from control.cli.apiclient import ApiClient
from control.devstack.chaos.audit import queued_job_ids, wait_ingested
from control.devstack.natscluster import NatsCluster
from control.sim import audit, seed, serverside
from control.sim.report import Report, percentiles
from control.sim.resources import Sampler
from control.sim.scenario import Scenario
from control.sim.stack import NodeProcess, Nodes, SimFleet
from control.sim.workload import TENANT, NodeWatch, Traffic, nodes_by_state
from schemas.subjects import Subjects

Progress = Callable[[str], None]
START_LIMIT_S = 900.0
INGEST_LIMIT_S = 300.0
POLL_S = 2.0


@dataclass
class Run:
    """What a finished run leaves for a caller's look before the stack stops (`inspect`)."""

    scenario: Scenario
    run_id: str
    fleet: SimFleet
    nodes: Nodes
    traffic: Traffic
    report: Report
    manifests: dict[str, dict[str, str]] = field(default_factory=dict)


Inspect = Callable[[Run], Awaitable[None]]


def _default_root(work: Path, run_id: str) -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else work
    return base / f"flotilla-sim-{run_id}"


def node_ids(count: int) -> list[str]:
    return [f"sim-{i:05d}" for i in range(1, count + 1)]


def plan_processes(s: Scenario, work: Path, state_root: Path, url: str, prefix: str) -> Nodes:
    """The dying nodes go first, one process per death (killing it kills exactly them); the
    rest are spread evenly over the other processes."""
    ids = node_ids(s.nodes)
    groups: list[tuple[str, list[str]]] = []
    at = 0
    for k, d in enumerate(s.deaths):
        groups.append((f"death-{k + 1}", ids[at : at + d.nodes]))
        at += d.nodes
    rest = ids[at:]
    n = s.process_count()
    for k in range(n):
        chunk = rest[k::n]
        if chunk:
            groups.append((f"nodes-{k + 1}", chunk))
    procs = []
    for name, members in groups:
        conf = work / f"{name}.json"
        conf.write_text(json.dumps({
            "nodes": members, "nats_url": url, "prefix": prefix, "state_root": str(state_root),
            "allowed_root": str(work), "slots": s.slots, "ack_wait": s.ack_wait,
            "daemon": s.daemon_settings(), "manifest": str(work / f"{name}.manifest.json"),
            "nice": s.nodes_nice,
        }))  # fmt: skip
        procs.append(NodeProcess(name, members, conf, work / f"{name}.log"))
    return Nodes(procs)


async def _wait_online(settings: NatsSettings, want: int, limit_s: float) -> int:
    client = ApiClient(settings, timeout=30.0)
    await client.__aenter__()
    try:
        deadline, online = time.monotonic() + limit_s, 0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                online = (await nodes_by_state(client)).get("online", 0)
                if online >= want:
                    return online
            await asyncio.sleep(POLL_S)
        return online
    finally:
        await client.__aexit__(None, None, None)


async def run(
    s: Scenario,
    work: Path,
    progress: Progress,
    *,
    state_root: Path | None = None,
    inspect: Inspect | None = None,
) -> Report:
    """Run `s` under `work`; node journals under `state_root` (default: a tmpfs if there is one)."""
    s.daemon_settings()  # a heartbeat that cannot keep nodes online is refused before starting
    began = time.monotonic()
    run_id = f"r{secrets.token_hex(3)}"
    own_root = state_root is None
    if state_root is None:
        state_root = await asyncio.to_thread(_default_root, work, run_id)
    await asyncio.to_thread(state_root.mkdir, parents=True, exist_ok=True)
    report = Report(s.name, s.nodes, dict(s.slots), s.process_count(), s.seed_jobs,
                    nodes_nice=s.nodes_nice)  # fmt: skip
    report.offline_limit_s = s.node_offline_after + 2 * s.alert_interval
    fleet = SimFleet(work / "stack", s)
    nodes = Nodes()
    try:
        progress("starting nats-server, PostgreSQL and the control plane …")
        await asyncio.wait_for(fleet.start(), START_LIMIT_S)
        settings = NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)
        await _wait_online(settings, 0, 120.0)  # the API answers: the schema is in place
        if s.seed_jobs:
            progress(f"seeding {s.seed_jobs:,} finished jobs into PostgreSQL …")
            wrote = await seed.seed(
                fleet.database_url, s.seed_jobs, nodes=s.nodes, progress=progress
            )
            progress(f"  {wrote:,} written, {s.seed_jobs - wrote:,} were there already")
        nodes = await asyncio.to_thread(
            plan_processes, s, work, state_root, fleet.nats_url, fleet.prefix
        )
        report.processes = len(nodes.procs)
        progress(f"starting {s.nodes} nodes in {len(nodes.procs)} simulator processes …")
        t = time.monotonic()
        await nodes.start_all()
        online = await _wait_online(settings, s.nodes, START_LIMIT_S)
        report.start_s = time.monotonic() - t
        progress(f"{online}/{s.nodes} nodes online after {report.start_s:.0f} s")
        traffic = Traffic(s, settings, run_id, work)
        traffic.seeded_ids = seed.seeded_sample(s.seed_jobs)
        await traffic.open()
        r = Run(s, run_id, fleet, nodes, traffic, report)
        try:
            await _drive(r, settings, progress)
            for p in nodes.procs:
                path = p.config.with_suffix("").with_suffix(".manifest.json")
                with contextlib.suppress(OSError):
                    r.manifests.update(json.loads(await asyncio.to_thread(path.read_text)))
            if inspect is not None:
                await inspect(r)
        finally:
            await traffic.close()
    finally:
        progress("stopping …")
        await nodes.stop_all()
        with contextlib.suppress(Exception):
            await fleet.stop(grace=30.0)
        if own_root:
            shutil.rmtree(state_root, ignore_errors=True)
    report.wall_s = time.monotonic() - began
    return report


async def _scrape(port: int, report: Report) -> serverside.Buckets | None:
    try:
        return await serverside.scrape(port)
    except (OSError, ValueError) as exc:  # the figures are extra: the run goes on without them
        report.notes.append(f"control plane metrics not read: {exc!r}")
        return None


async def _drive(r: Run, settings: NatsSettings, progress: Progress) -> None:
    s, report, fleet, nodes = r.scenario, r.report, r.fleet, r.nodes
    stop_ops, stop_watch, stop_sampling = asyncio.Event(), asyncio.Event(), asyncio.Event()
    sampler = Sampler({
        "nats": lambda: _nats_pids(fleet),
        "postgres": lambda: [p for p in [fleet.stack.postgres.pid] if p],
        "control": lambda: [fleet.procs["control"].pid],
        "nodes": lambda: [p.pid for p in nodes.procs if p.pid and p.proc and
                          p.proc.returncode is None],
        "driver": lambda: [os.getpid()],
    }, alone=frozenset({"driver"}))  # fmt: skip
    watch = NodeWatch(settings, fleet.prefix)
    t0 = time.time()
    # The client-side figures are timed on this loop: its own lateness is part of each of them.
    driver_lag: list[float] = []
    background = [
        asyncio.create_task(sampler.run(stop_sampling)),
        asyncio.create_task(watch_loop_lag(driver_lag.append, stop_sampling)),
        asyncio.create_task(watch.run(stop_watch)),
        asyncio.create_task(r.traffic.operator(stop_ops)),
    ]
    deaths = [asyncio.create_task(_death(k, d.at_s, d.restart_after_s, r, watch, progress))
              for k, d in enumerate(s.deaths)]  # fmt: skip
    port = fleet.metrics_ports["control"]
    before = await _scrape(port, report)
    progress(f"submitting {int(s.rate * s.duration_s)} jobs at {s.rate:g}/s …")
    await r.traffic.submit_all()
    t_sub = time.time()
    confirmed = {j for j, x in r.traffic.sent.items() if x.confirmed}
    progress(f"{len(confirmed)} confirmed; settling (at most {s.settle_s:.0f} s) …")
    conn = await asyncpg.connect(fleet.database_url, timeout=30)
    try:
        deadline = time.monotonic() + s.settle_s
        while time.monotonic() < deadline:
            if await audit.terminal_count(conn, TENANT, r.run_id) >= len(confirmed):
                report.settled = True
                break
            await asyncio.sleep(POLL_S)
        await asyncio.gather(*deaths, return_exceptions=True)
        # Every death gets its full detection and alert window before the verdict.
        last_kill = max(watch.killed.values(), default=0.0)
        wait = last_kill + report.offline_limit_s + 5.0 - time.time()
        while wait > 0 and (watch._waiting() or not _alerted(watch)):
            await asyncio.sleep(min(POLL_S, wait))
            wait = last_kill + report.offline_limit_s + 5.0 - time.time()
        stop_ops.set()
        t_end = time.time()
        await r.traffic.drain()
        after = await _scrape(port, report)
        if before is not None and after is not None:
            report.server_api, report.loop_lag = serverside.figures(before, after)
            report.gc_pauses = serverside.by_label(before, after, serverside.GC, "generation")
        _usage_extras(report, nodes)
        stop_sampling.set()
        stop_watch.set()
        await asyncio.gather(*background, return_exceptions=True)
        report.usage = sampler.usage()
        nc = await connect(settings, name="flotilla-sim-audit", reconnect=True)
        try:
            js = nc.jetstream(timeout=30)
            subjects = Subjects(fleet.prefix)
            if not await wait_ingested(js, subjects.events_stream, subjects.ingest_consumer,
                                       INGEST_LIMIT_S):  # fmt: skip
                report.notes.append(f"ingest still behind after {INGEST_LIMIT_S:.0f} s")
            queued, _ = await queued_job_ids(js, subjects.jobs_stream)
        finally:
            await nc.close()
        report.jobs, first_start = await audit.audit_jobs(conn, TENANT, r.run_id, confirmed,
                                                          queued)  # fmt: skip
        report.jobs.submitted = len(r.traffic.sent)
        report.ingest = await audit.ingest(conn, t0, max(t_sub, t_end))
        fired = await audit.alerts_in_db(conn, t0)
    finally:
        await conn.close()
    report.api = {v: percentiles(x) for v, x in r.traffic.lat.samples.items()}
    report.driver_loop_lag = percentiles(driver_lag)
    report.api_errors = dict(r.traffic.lat.errors)
    report.api_last_error = dict(r.traffic.lat.last_error)
    report.dispatch = percentiles([first_start[j] - x.at for j, x in r.traffic.sent.items()
                                   if j in first_start and x.confirmed])  # fmt: skip
    report.killed = sorted(watch.killed)
    report.offline_detect = {n: watch.offline_at[n] - k for n, k in watch.killed.items()
                             if n in watch.offline_at}  # fmt: skip
    report.offline_seen_as = dict(watch.seen_as)
    report.node_list_bytes = watch.reply_bytes
    if watch.errors:
        report.notes.append(f"node watch: {watch.errors} failed node.list ({watch.last_error})")
    report.alerts_expected = sorted(watch.killed)
    for _, a in watch.alerts:
        if a.rule == "node_offline" and a.state == "firing" and a.subject in watch.killed:
            report.alerts_fired.setdefault(a.subject, a.fired_at - watch.killed[a.subject])
        elif a.state == "firing":
            report.alerts_other.append(f"{a.rule}:{a.subject}")
    stored = {(rule, subj) for rule, subj, _ in fired}
    missing = [n for n in report.alerts_fired if ("node_offline", n) not in stored]
    if missing:
        report.notes.append(f"node_offline alerts published but not in Postgres: {missing}")


def _nats_pids(fleet: SimFleet) -> list[int]:
    nats = fleet.stack.nats
    servers = nats.servers if isinstance(nats, NatsCluster) else [nats]
    return [s.pid for s in servers if s.pid]


def _alerted(watch: NodeWatch) -> bool:
    got = {a.subject for _, a in watch.alerts if a.rule == "node_offline"}
    return set(watch.killed) <= got


async def _death(
    k: int, at_s: float, restart_after: float | None, r: Run, watch: NodeWatch, progress: Progress
) -> None:
    await asyncio.sleep(at_s)
    proc = r.nodes.by_name(f"death-{k + 1}")
    await proc.kill()
    now = time.time()
    for node in proc.nodes:
        watch.killed[node] = now
    progress(f"  killed {len(proc.nodes)} node(s): {', '.join(proc.nodes)}")
    if restart_after is not None:
        await asyncio.sleep(restart_after)
        await proc.start()
        await proc.ready()
        progress(f"  restarted {', '.join(proc.nodes)}")


def _usage_extras(report: Report, nodes: Nodes) -> None:
    """Descriptors and threads of each live simulator process (journals hold a thread each)."""
    for p in nodes.procs:
        if p.pid and p.proc and p.proc.returncode is None:
            with contextlib.suppress(psutil.Error):
                ps = psutil.Process(p.pid)
                report.fds[p.name] = ps.num_fds()
                report.threads[p.name] = ps.num_threads()
