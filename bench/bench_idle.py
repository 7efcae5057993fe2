"""What an idle node costs: CPU and NATS traffic per node per second, with no job to run.

Starts an embedded nats-server (monitoring on), the topology of one `cpu` pool, and N unchanged
daemons (`daemon.app.Daemon`, as `flotilla sim` runs them: synthesized capabilities, the timed
stand-in for ffmpeg, journals on a tmpfs when there is one) on one uvloop loop in this process.
After a warm-up it measures, over a window:

- this process's CPU seconds (every daemon, their journals' threads) per node per second;
- nats-server's CPU seconds per node per second;
- messages into the server per node per second (`in_msgs` of /varz: every publish and request
  the nodes send; the replies are `out_msgs`).

`--busy K` first has a client take K jobs of the `normal` lane and hold them (never acked, ack
wait an hour): the lane then has jobs out, as on a fleet where jobs run on other nodes, which is
what an idle node's sweep sees most of the time under load. `--breakdown` counts the nodes'
messages by subject (a monitoring subscription on `>`, so its own deliveries inflate `out_msgs`
and nats-server's CPU in that run: read the rates from a run without it). `--profile FILE`
writes a cProfile of the window.

    python bench/bench_idle.py --nodes 100 --seconds 60
    python bench/bench_idle.py --nodes 100 --seconds 60 --busy 20 --breakdown
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import nats
import psutil
import uvloop
from nats.aio.msg import Msg

from control.devstack.nats import HOST, NatsServer
from control.sim.nodes import STOP_LIMIT_S, WorkerConfig, capabilities, daemon_config
from control.sim.standin import run_standin
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from schemas.subjects import Subjects

PREFIX = "idle"
BATCH = 25
HOLD_ACK_WAIT = 3600.0


async def varz(http_port: int) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(HOST, http_port)
    try:
        writer.write(f"GET /varz HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    body: dict[str, Any] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return body


def kind(subject: str) -> str:
    """A subject with its ids left out: `$JS.API.CONSUMER.INFO.<stream>.<consumer>` and the
    like keep their verb, inboxes and the nodes' own subjects their first tokens."""
    tokens = subject.split(".")
    if subject.startswith("$JS.API.CONSUMER.MSG.NEXT"):
        return "$JS.API.CONSUMER.MSG.NEXT (pull request)"
    if subject.startswith("$JS.API."):
        return ".".join(tokens[:4])
    if subject.startswith("$KV."):
        return "$KV.<bucket> (heartbeat put)"
    if subject.startswith("$JS.ACK"):
        return "$JS.ACK"
    if subject.startswith("_INBOX"):
        return "_INBOX (replies)"
    return ".".join(tokens[:2])


async def hold(url: str, subjects: Subjects, count: int) -> Any:
    """Submit `count` jobs of the normal lane and take them without acking: jobs out elsewhere."""
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    for i in range(count):
        subject = subjects.submit("default", "cpu", "normal", f"held-{i}")
        await js.publish(subject, b"{}", headers={"Nats-Msg-Id": f"held-{i}"})
    sub = await js.pull_subscribe_bind(subjects.consumer("cpu", "normal"), subjects.jobs_stream)
    taken = 0
    while taken < count:
        taken += len(await sub.fetch(count - taken, timeout=5))
    return nc


def tmpfs() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def sample(me: psutil.Process, server: psutil.Process) -> tuple[float, float, float]:
    """CPU seconds of this process and of nats-server, and the time."""
    mine, its = me.cpu_times(), server.cpu_times()
    return mine.user + mine.system, its.user + its.system, time.monotonic()


async def run(args: argparse.Namespace) -> None:
    base = tmpfs()
    with tempfile.TemporaryDirectory(dir=base, prefix="bench-idle-") as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats")
        await server.start()
        assert server._proc is not None
        nats_proc = psutil.Process(server._proc.pid)
        subjects = Subjects(PREFIX)
        nc = await nats.connect(server.url)
        holder = None
        daemons: list[Daemon] = []
        try:
            ack_wait = HOLD_ACK_WAIT if args.busy else 120.0
            topo = TopologySettings(pools=["cpu"], ack_wait=ack_wait)
            await ensure_topology(nc.jetstream(timeout=10), subjects, topo)
            if args.busy:
                holder = await hold(server.url, subjects, args.busy)
            conf = WorkerConfig(
                nodes=[f"n{i:04d}" for i in range(args.nodes)],
                nats_url=server.url,
                prefix=PREFIX,
                state_root=str(root / "nodes"),
                allowed_root=str(root),
                slots={"cpu": args.slots},
                ack_wait=ack_wait,
                manifest=str(root / "manifest.json"),
                daemon=dict(settings(args.set)),
            )
            disk = (1 << 40, 1 << 39)
            daemons = [
                Daemon(
                    daemon_config(conf, n),
                    capabilities=capabilities(n, conf.slots, "ffmpeg", disk),
                    operation_runner=run_standin,
                )
                for n in conf.nodes
            ]
            for i in range(0, len(daemons), BATCH):
                await asyncio.gather(*(d.start() for d in daemons[i : i + BATCH]))
            counts: Counter[str] = Counter()
            if args.breakdown:

                async def count(msg: Msg) -> None:
                    counts[kind(msg.subject)] += 1

                await nc.subscribe(">", cb=count)
            await asyncio.sleep(args.warmup)
            counts.clear()
            me = psutil.Process()
            v0, (c0, n0, t0) = await varz(server.http_port), sample(me, nats_proc)
            profile = cProfile.Profile() if args.profile else None
            if profile is not None:
                profile.enable()
            await asyncio.sleep(args.seconds)
            if profile is not None:
                profile.disable()
                profile.dump_stats(args.profile)
            v1, (c1, n1, t1) = await varz(server.http_port), sample(me, nats_proc)
            wall, n = t1 - t0, args.nodes
            node_cpu = (c1 - c0) / wall / n * 1000
            server_cpu = (n1 - n0) / wall / n * 1000
            in_rate = (v1["in_msgs"] - v0["in_msgs"]) / wall / n
            out_rate = (v1["out_msgs"] - v0["out_msgs"]) / wall / n
            print(f"{n} idle nodes x {args.slots} slots, {args.busy} jobs out elsewhere, "
                  f"{wall:.0f} s window, load average {os.getloadavg()[0]:.2f}")  # fmt: skip
            print(f"  node CPU        {node_cpu:.3f} ms per node per s")
            print(f"  nats-server CPU {server_cpu:.3f} ms per node per s")
            print(f"  messages in     {in_rate:.3f} per node per s (out {out_rate:.3f})")
            if args.breakdown:
                for subject, c in counts.most_common():
                    print(f"    {c / wall / n:8.3f}/node/s  {subject}")
        finally:
            try:
                # As `flotilla sim` does: a few of many daemons stopping at once can take long.
                ends = [asyncio.wait_for(d.stop(force=True), STOP_LIMIT_S) for d in daemons]
                results = await asyncio.gather(*ends, return_exceptions=True)
                stuck = sum(isinstance(r, BaseException) for r in results)
                if stuck:
                    print(f"  ({stuck} nodes did not stop within {STOP_LIMIT_S:.0f} s)")
                if holder is not None:
                    await holder.close()
                await nc.close()
            finally:
                await server.stop()


def settings(pairs: list[str]) -> list[tuple[str, Any]]:
    """`key=value` daemon settings; the value read as JSON where it is JSON (numbers)."""
    out = []
    for pair in pairs:
        key, _, raw = pair.partition("=")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        out.append((key, value))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--busy", type=int, default=0, help="jobs held out of the normal lane")
    parser.add_argument("--breakdown", action="store_true")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--set", action="append", default=[], help="a daemon setting: key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    uvloop.run(run(args))
    # A node that did not stop left its journal's thread running, which would hold the process.
    os._exit(0)


if __name__ == "__main__":
    main()
