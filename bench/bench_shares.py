"""Fair shares over a long mixed run, against a FIFO pool in the same run.

A real nats-server and the daemon's own pool pullers (lanes, share book, slots, wake-ups): NODES
nodes, each pulling two pools with SLOTS slots apiece. Pool `fair` is shared 3:2:1 by tenants
a, b and c (topology.shares); pool `fifo` is a plain pool. Both get the same workload: the
tenants' jobs differ in length (a: 0.2-1 s, b: 0.5-2 s, c: 1-4 s, drawn per job) and a producer
keeps BACKLOG jobs of each tenant queued in each pool all the time, so every tenant always has
work waiting. A job holds its slot for its drawn time (an asyncio sleep: this measures the
scheduling, not encoding), is acked and ends as a daemon's job task does.

Printed per pool and tenant: the share of the slot-seconds used after the warm-up, next to the
share its weight asks for, and the deviation from it. `fifo` shows what the same tenants get
without shares (about their job lengths' ratio). About DURATION_S + 15 s.

    python bench/bench_shares.py [--duration S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg

from control.devstack.nats import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.pull.puller import PoolPuller
from daemon.pull.slots import Slots
from schemas.subjects import Subjects, parse_stored

NODES = 4
SLOTS = 3
BACKLOG = 6
WEIGHTS = {"a": 3.0, "b": 2.0, "c": 1.0}
SECONDS = {"a": (0.2, 1.0), "b": (0.5, 2.0), "c": (1.0, 4.0)}
DURATION_S = 90.0
WARMUP_S = 10.0
POOLS = ("fair", "fifo")


class Ledger:
    """Each job's start and end (monotonic), per pool and tenant."""

    def __init__(self) -> None:
        self.runs: dict[str, list[tuple[str, float, float | None]]] = defaultdict(list)
        self.started: dict[tuple[str, str], int] = defaultdict(int)
        self.submitted: dict[tuple[str, str], int] = defaultdict(int)

    def slot_seconds(self, pool: str, since: float, until: float) -> dict[str, float]:
        used: dict[str, float] = defaultdict(float)
        for tenant, start, end in self.runs[pool]:
            lo, hi = max(start, since), min(end if end is not None else until, until)
            used[tenant] += max(0.0, hi - lo)
        return dict(used)


async def node(url: str, prefix: str, ledger: Ledger, stop: asyncio.Event) -> None:
    nc = await nats.connect(url)
    slots = Slots(dict.fromkeys(POOLS, SLOTS))
    tasks: set[asyncio.Task[None]] = set()

    async def job(msg: Msg, pool: str) -> None:
        tenant = parse_stored(msg.subject).tenant or ""
        i = len(ledger.runs[pool])
        ledger.runs[pool].append((tenant, time.monotonic(), None))
        ledger.started[(pool, tenant)] += 1
        try:
            await asyncio.sleep(json.loads(msg.data)["seconds"])
            with contextlib.suppress(Exception):
                await msg.ack()
        finally:
            ledger.runs[pool][i] = (tenant, ledger.runs[pool][i][1], time.monotonic())
            slots.release(pool)  # with the job's hold in context: the book trues up

    def spawn(msg: Msg, pool: str, _prio: str) -> None:
        task = asyncio.get_running_loop().create_task(job(msg, pool))  # inherits the hold
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    pullers = [
        PoolPuller(
            nc.jetstream(timeout=10),
            Subjects(prefix),
            pool,
            slots,
            spawn,
            fetch_timeout=1.0,
            wake_source=nc,
        )
        for pool in POOLS
    ]
    runs = [asyncio.create_task(p.run()) for p in pullers]
    await stop.wait()
    for p in pullers:
        p.stop()
    await asyncio.gather(*runs, return_exceptions=True)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await nc.close()


async def producer(nc: Client, prefix: str, ledger: Ledger, stop: asyncio.Event) -> None:
    js = nc.jetstream(timeout=10)
    subjects = Subjects(prefix)
    rng = random.Random(7)
    n = 0
    while not stop.is_set():
        for pool in POOLS:
            for tenant in WEIGHTS:
                key = (pool, tenant)
                while ledger.submitted[key] - ledger.started[key] < BACKLOG:
                    n += 1
                    body = json.dumps({"seconds": rng.uniform(*SECONDS[tenant])}).encode()
                    job_id = f"j{n}"
                    subject = subjects.submit(tenant, pool, "normal", job_id)
                    await js.publish(subject, body, headers={"Nats-Msg-Id": f"{tenant}.{job_id}"})
                    ledger.submitted[key] += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


async def main(duration: float, as_json: bool) -> int:
    with tempfile.TemporaryDirectory(prefix="flotilla-bench-shares-") as tmp:
        server = NatsServer(Path(tmp) / "nats")
        await server.start()
        try:
            nc = await nats.connect(server.url)
            prefix = "bench"
            topo = TopologySettings(
                pools=list(POOLS), ack_wait=60.0, shares={"fair": dict(WEIGHTS)}
            )
            await ensure_topology(nc.jetstream(timeout=10), Subjects(prefix), topo)
            ledger, stop = Ledger(), asyncio.Event()
            began = time.monotonic()
            nodes = [
                asyncio.create_task(node(server.url, prefix, ledger, stop)) for _ in range(NODES)
            ]
            feed = asyncio.create_task(producer(nc, prefix, ledger, stop))
            await asyncio.sleep(duration)
            ended = time.monotonic()
            stop.set()
            await asyncio.gather(feed, *nodes)
            await nc.close()
        finally:
            await server.stop()
    want = {t: w / sum(WEIGHTS.values()) for t, w in WEIGHTS.items()}
    pools: dict[str, object] = {}
    result = {"nodes": NODES, "slots": SLOTS, "duration_s": duration, "warmup_s": WARMUP_S,
              "weights": WEIGHTS, "pools": pools}  # fmt: skip
    lines = [
        f"{NODES} nodes x {SLOTS} slots per pool, {duration:.0f} s (first {WARMUP_S:.0f} s "
        "not counted), every tenant always backlogged",
        "",
        "pool  tenant  weight share  slot-s   share   deviation  jobs",
    ]
    for pool in POOLS:
        used = ledger.slot_seconds(pool, began + WARMUP_S, ended)
        total = sum(used.values()) or 1.0
        rows: dict[str, dict[str, float]] = {}
        for t in WEIGHTS:
            share = used.get(t, 0.0) / total
            dev = share / want[t] - 1.0
            jobs = ledger.started[(pool, t)]
            rows[t] = {"slot_s": round(used.get(t, 0.0), 1), "share": round(share, 4),
                       "weight_share": round(want[t], 4), "deviation": round(dev, 4),
                       "jobs": jobs}  # fmt: skip
            lines.append(f"{pool:5} {t:7} {want[t]:11.1%} {used.get(t, 0.0):7.1f} {share:7.1%}"
                         f" {dev:+10.1%} {jobs:5d}")  # fmt: skip
        worst = max(abs(r["deviation"]) for r in rows.values())
        pools[pool] = {"tenants": rows, "worst_deviation": worst}
        lines.append(f"{pool:5} worst deviation from the weights: {worst:.1%}")
    print(json.dumps(result, indent=2) if as_json else "\n".join(lines))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=DURATION_S)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.exit(uvloop.run(main(args.duration, args.json)))
