"""Deadline hit rate, earliest deadline first against FIFO in the same run, same workload.

A real nats-server, the daemon's own pool pullers (lanes, slots, wake-ups) and the control
plane's own releaser (control/deadlines/release.py): NODES nodes, each pulling two pools with
SLOTS slots apiece. Pool `edf` gets every job on its held subject (`<prefix>.timed.…`, as the
API submits a job with a deadline) and a Releaser, as the leader runs it, keeps the pool's due
lane at its free slots plus MARGIN, earliest deadline first (the free slots are read from the
nodes' slot counters directly, where the leader reads the nodes' heartbeats). Pool `fifo` gets
the same jobs as plain submits, pulled in submit order.

One seeded job stream goes to both pools at the same instants: Poisson arrivals at LOAD times
a pool's capacity; each job runs 0.2-2 s (drawn; an asyncio sleep holding its slot, then acked
and ended as a daemon's job task does) and has a deadline of its submit time plus a slack drawn
per job: URGENT_SHARE of the jobs are urgent (1.5-4 x their run time), the others relaxed
(20-60 x). A job meets its deadline if it ends by it.

First, with the pools idle, PROBES short jobs go to each pool one at a time: their submit-to-
start is the dispatch itself, and `edf`'s less `fifo`'s is what the release adds to it (the
held submit kicks the releaser, which publishes to the due lane, whose wake-up starts a node).

Counted: the jobs submitted after the warm-up and before DURATION_S; the producer goes on for
DRAIN_S more (so the counted jobs still compete with a full queue), then everything stops. A
counted job unfinished then is a miss if its deadline has passed, else left out ("open").

Printed: the idle submit-to-start p50 (and max) per pool; then per pool: jobs counted, hit
rate (all, urgent, relaxed), mean and p95 lateness of the finished misses, unfinished misses
and open jobs, submit-to-start p50 and p95 of urgent and relaxed jobs, and the slots'
utilisation over the counted time (what the release's dispatch costs under load shows as a
lower utilisation of `edf`); then the EDF / FIFO hit rate ratio, of all jobs and of the urgent
ones. About DURATION_S + 15 s.

    python bench/bench_deadlines.py [--duration S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from control.deadlines.release import Releaser
from control.devstack.nats import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.pull.puller import PoolPuller
from daemon.pull.slots import Slots
from schemas.codec import encode
from schemas.common import Priority
from schemas.jobs import JobSpec, Requirements
from schemas.operations import Probe
from schemas.subjects import Subjects, parse_stored

NODES = 4
SLOTS = 2
RUN_S = (0.2, 2.0)
URGENT_SHARE = 0.3
URGENT_SLACK = (1.5, 4.0)
RELAXED_SLACK = (20.0, 60.0)
#: Offered load: arrivals per second times the mean run time, over a pool's slots.
LOAD = 1.0
DURATION_S = 60.0
WARMUP_S = 10.0
DRAIN_S = 8.0
#: The control plane's defaults (control/config.py deadline_release_margin; the Releaser's tick).
MARGIN = 2
INTERVAL = 0.2
POOLS = ("edf", "fifo")
TENANT = "default"
PRIO: Priority = "normal"
SEED = 11
#: Jobs sent one at a time to each idle pool first: the release's own dispatch latency.
PROBES = 10
PROBE_RUN_S = 0.05


@dataclass
class Job:
    urgent: bool
    run: float
    #: Epoch seconds, as a deadline is (the releaser reads it from the body).
    submitted: float
    deadline: float
    start: float | None = None
    end: float | None = None


@dataclass
class Ledger:
    jobs: dict[str, dict[str, Job]] = field(default_factory=lambda: {p: {} for p in POOLS})
    #: Deliveries of a job that had started already (a redelivery): none expected.
    again: int = 0


def spec(job_id: str, pool: str, job: Job) -> bytes:
    deadline = datetime.fromtimestamp(job.deadline, UTC)
    return encode(JobSpec(job_id=job_id, tenant=TENANT, priority=PRIO, input="file:///in.mp4",
                          operation=Probe(), requirements=Requirements(pool=pool),
                          deadline=deadline, metadata={"seconds": f"{job.run:.3f}"}))  # fmt: skip


async def node(
    url: str, subjects: Subjects, slots: Slots, ledger: Ledger, stop: asyncio.Event
) -> None:
    nc = await nats.connect(url)
    tasks: set[asyncio.Task[None]] = set()

    async def run(msg: Msg, pool: str) -> None:
        job = ledger.jobs[pool].get(parse_stored(msg.subject).job_id)
        try:
            if job is None or job.start is not None:
                ledger.again += 1
            else:
                job.start = time.time()
                await asyncio.sleep(job.run)
                job.end = time.time()
            with contextlib.suppress(Exception):
                await msg.ack()
        finally:
            slots.release(pool)  # with the job's hold in context, as the daemon's job task

    def spawn(msg: Msg, pool: str, _prio: str) -> None:
        task = asyncio.get_running_loop().create_task(run(msg, pool))  # inherits the hold
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    pullers = [
        PoolPuller(nc.jetstream(timeout=10), subjects, pool, slots, spawn,
                   fetch_timeout=1.0, wake_source=nc)
        for pool in POOLS
    ]  # fmt: skip
    runs = [asyncio.create_task(p.run()) for p in pullers]
    await stop.wait()
    for p in pullers:
        p.stop()
    await asyncio.wait(runs, timeout=5.0)
    for t in [*runs, *tasks]:
        t.cancel()
    await asyncio.gather(*runs, *tasks, return_exceptions=True)
    await nc.close()


async def submit(
    js: JetStreamContext, subjects: Subjects, pool: str, job_id: str, job: Job
) -> None:
    """To `edf` on the held subject, as the API submits a job with a deadline; to `fifo` as a
    plain submit."""
    make = subjects.timed if pool == "edf" else subjects.submit
    headers = {"Nats-Msg-Id": f"{TENANT}.{job_id}"}
    await js.publish(make(TENANT, pool, PRIO, job_id), spec(job_id, pool, job),
                     headers=headers, stream=subjects.jobs_stream)  # fmt: skip


async def probe(nc: Client, subjects: Subjects, ledger: Ledger) -> dict[str, list[float]]:
    """The pools idle: PROBES jobs, one at a time to each pool in turn; submit-to-start of each
    (on `edf` that includes the release)."""
    js = nc.jetstream(timeout=10)
    waits: dict[str, list[float]] = {p: [] for p in POOLS}
    for i in range(PROBES):
        for pool in POOLS:
            now = time.time()
            job = ledger.jobs[pool][f"{pool}probe{i}"] = Job(False, PROBE_RUN_S, now, now + 60.0)
            await submit(js, subjects, pool, f"{pool}probe{i}", job)
            for _ in range(500):  # at most 5 s
                if job.end is not None:
                    break
                await asyncio.sleep(0.01)
            if job.start is not None:
                waits[pool].append(job.start - job.submitted)
            await asyncio.sleep(0.05)
    return waits


async def producer(nc: Client, subjects: Subjects, ledger: Ledger, stop: asyncio.Event) -> int:
    """Poisson arrivals of one seeded stream, each job to both pools at once; returns the jobs
    submitted per pool."""
    js = nc.jetstream(timeout=10)
    rng = random.Random(SEED)
    rate = LOAD * NODES * SLOTS / statistics.fmean(RUN_S)
    loop = asyncio.get_running_loop()
    at, n = loop.time(), 0
    while not stop.is_set():
        at += rng.expovariate(rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, at - loop.time()))
        if stop.is_set():
            break
        n += 1
        run = rng.uniform(*RUN_S)
        urgent = rng.random() < URGENT_SHARE
        slack = run * rng.uniform(*(URGENT_SLACK if urgent else RELAXED_SLACK))
        now = time.time()
        sends = []
        for pool in POOLS:
            job_id = f"{pool}{n}"  # one id per pool: the stream dedups on `<tenant>.<job_id>`
            job = ledger.jobs[pool][job_id] = Job(urgent, run, now, now + slack)
            sends.append(submit(js, subjects, pool, job_id, job))
        await asyncio.gather(*sends)
    return n


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def report(jobs: dict[str, Job], since: float, until: float, stopped: float) -> dict[str, object]:
    """One pool's figures over the jobs submitted in [since, until), judged at `stopped`."""
    counted = [j for j in jobs.values() if since <= j.submitted < until]
    hits = {True: 0, False: 0}
    judged = {True: 0, False: 0}
    late: list[float] = []
    unfinished_misses = opened = 0
    waits: dict[bool, list[float]] = {True: [], False: []}
    for j in counted:
        if j.start is not None:
            waits[j.urgent].append(j.start - j.submitted)
        if j.end is not None:
            judged[j.urgent] += 1
            if j.end <= j.deadline:
                hits[j.urgent] += 1
            else:
                late.append(j.end - j.deadline)
        elif j.deadline < stopped:
            judged[j.urgent] += 1
            unfinished_misses += 1
        else:
            opened += 1
    busy = 0.0
    for j in jobs.values():
        if j.start is not None:
            end = j.end if j.end is not None else stopped
            busy += max(0.0, min(end, stopped) - max(j.start, since))
    return {
        "jobs": len(counted),
        "finished": sum(1 for j in counted if j.end is not None),
        "hit_rate": rate(hits[True] + hits[False], judged[True] + judged[False]),
        "urgent_hit_rate": rate(hits[True], judged[True]),
        "relaxed_hit_rate": rate(hits[False], judged[False]),
        "late_mean_s": statistics.fmean(late) if late else None,
        "late_p95_s": pct(late, 0.95),
        "unfinished_misses": unfinished_misses,
        "open": opened,
        "urgent_wait_p50_s": pct(waits[True], 0.5),
        "urgent_wait_p95_s": pct(waits[True], 0.95),
        "relaxed_wait_p50_s": pct(waits[False], 0.5),
        "relaxed_wait_p95_s": pct(waits[False], 0.95),
        "utilisation": busy / (NODES * SLOTS * max(1e-9, stopped - since)),
    }


def over(pools: dict[str, dict[str, object]], key: str) -> float | None:
    """`edf`'s figure over `fifo`'s."""
    edf, fifo = pools["edf"][key], pools["fifo"][key]
    return edf / fifo if isinstance(edf, float) and isinstance(fifo, float) and fifo else None


def fmt(value: object, spec: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


async def held_in_stream(js: JetStreamContext, subjects: Subjects) -> int:
    """Held jobs left in the jobs stream (never released)."""
    held, seq = 0, 1
    for _ in range(100_000):
        try:
            msg = await js.get_msg(
                subjects.jobs_stream, seq=seq, subject=subjects.timed_wildcard, next=True
            )
        except NotFoundError:
            break
        held, seq = held + 1, (msg.seq or seq) + 1
    return held


async def main(duration: float, as_json: bool) -> int:
    warmup = min(WARMUP_S, duration / 3)
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-deadlines-") as tmp:
        server = NatsServer(Path(tmp) / "nats")
        await server.start()
        try:
            nc = await nats.connect(server.url)
            topo = TopologySettings(pools=list(POOLS), ack_wait=60.0)
            subjects = topo.subjects(Subjects("bench"))
            await ensure_topology(nc.jetstream(timeout=10), subjects, topo)
            ledger, stop, stop_feed = Ledger(), asyncio.Event(), asyncio.Event()
            slots = [Slots(dict.fromkeys(POOLS, SLOTS)) for _ in range(NODES)]

            def free(pool: str, _prio: str) -> int:
                return sum(s.free(pool) for s in slots)

            releaser = Releaser(nc.jetstream(timeout=10), nc, subjects, free,
                                margin=MARGIN, interval=INTERVAL)  # fmt: skip
            release = asyncio.create_task(releaser.run(stop))
            nodes = [
                asyncio.create_task(node(server.url, subjects, s, ledger, stop)) for s in slots
            ]
            await asyncio.sleep(1.0)  # the pullers bind their consumers
            idle = await probe(nc, subjects, ledger)
            began = time.time()
            feed = asyncio.create_task(producer(nc, subjects, ledger, stop_feed))
            await asyncio.sleep(duration + DRAIN_S)
            stop_feed.set()
            submitted = await asyncio.wait_for(feed, 15.0)
            stopped = time.time()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*nodes), 20.0)
            await asyncio.wait_for(asyncio.gather(release, return_exceptions=True), 10.0)
            failed = None if release.cancelled() else release.exception()
            held_left = await held_in_stream(nc.jetstream(timeout=10), subjects)
            await nc.close()
        finally:
            await server.stop()
    since, until = began + warmup, began + duration
    pools = {p: report(ledger.jobs[p], since, until, stopped) for p in POOLS}
    ratio = over(pools, "hit_rate")
    urgent_ratio = over(pools, "urgent_hit_rate")
    probes = {p: {"jobs": len(w), "p50_s": pct(w, 0.5), "max_s": max(w, default=None)}
              for p, w in idle.items()}  # fmt: skip
    result = {
        "nodes": NODES, "slots": SLOTS, "load": LOAD, "duration_s": duration,
        "warmup_s": warmup, "drain_s": DRAIN_S, "urgent_share": URGENT_SHARE,
        "margin": MARGIN, "interval_s": INTERVAL, "submitted_per_pool": submitted,
        "released": releaser.stats.released, "held_at_end": held_left,
        "releaser_error": None if failed is None else repr(failed),
        "redelivered": ledger.again, "idle_start": probes, "pools": pools,
        "edf_over_fifo": ratio, "urgent_edf_over_fifo": urgent_ratio,
    }  # fmt: skip
    lines = [
        f"{NODES} nodes x {SLOTS} slots per pool, offered load {LOAD:.2f}, jobs {RUN_S[0]}-"
        f"{RUN_S[1]} s, {URGENT_SHARE:.0%} urgent (slack {URGENT_SLACK[0]}-{URGENT_SLACK[1]}x"
        f" run) else relaxed ({RELAXED_SLACK[0]:.0f}-{RELAXED_SLACK[1]:.0f}x)",
        f"jobs submitted {warmup:.0f}-{duration:.0f} s counted, load kept on {DRAIN_S:.0f} s "
        f"more; {submitted} submitted per pool, {releaser.stats.released} released to edf's "
        f"due lane (probes too; margin {MARGIN}, tick {INTERVAL} s), {held_left} left held",
        "idle pool, submit to start, p50 (max) of "
        + ", ".join(f"{r['jobs']} {p}: {fmt(r['p50_s'], '.3f', 's')}"
                    f" ({fmt(r['max_s'], '.3f', 's')})" for p, r in probes.items()),
        "",
        "pool  jobs  hit    urgent relaxed late mean  p95   unfin open  "
        "urg wait p50  p95   rel wait p50  p95   util",
    ]  # fmt: skip
    for pool, r in pools.items():
        cells = [
            f"{pool:5}", f"{r['jobs']:4}", fmt(r["hit_rate"], "6.1%"),
            fmt(r["urgent_hit_rate"], "6.1%"), fmt(r["relaxed_hit_rate"], "6.1%"),
            fmt(r["late_mean_s"], "8.2f", "s"), fmt(r["late_p95_s"], "6.2f", "s"),
            f"{r['unfinished_misses']:5}", f"{r['open']:4}",
            fmt(r["urgent_wait_p50_s"], "11.2f", "s"), fmt(r["urgent_wait_p95_s"], "6.2f", "s"),
            fmt(r["relaxed_wait_p50_s"], "11.2f", "s"), fmt(r["relaxed_wait_p95_s"], "6.2f", "s"),
            fmt(r["utilisation"], "6.1%"),
        ]  # fmt: skip
        lines.append(" ".join(cells))
    lines.append("")
    lines.append(
        f"hit rate EDF / FIFO: {fmt(ratio, '.2f')} (urgent jobs: {fmt(urgent_ratio, '.2f')})"
    )
    if failed is not None:
        lines.append(f"the releaser failed: {failed!r}")
    if ledger.again:
        lines.append(f"{ledger.again} deliveries of jobs that had started already")
    print(json.dumps(result, indent=2) if as_json else "\n".join(lines))
    return 0 if failed is None else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.exit(uvloop.run(main(args.duration, args.json)))
