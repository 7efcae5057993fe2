"""No-op dispatch next to its peers, in one run: Flotilla, Celery + Redis, arq, with the ratios.

Flotilla: `canary` jobs (no ffmpeg) through one in-process daemon with 2 slots and its default
durability (journal FULL sync for what gates an ack, the terminal event PubAck'd before the ack,
the embedded nats-server's `sync_interval: always`). The peers: the ready scripts of a peers
folder (`--peers DIR` or `$FLOTILLA_PEERS_DIR`; each `<peer>/run.sh` sets its system up, runs
its own measurement and prints one JSON line): Celery 5.7 + Redis, prefork with 2 worker
processes, and arq, tuned, 2 worker processes. All run one after another, never at once.

Both measures are the peers' own:
(a) throughput: N jobs submitted at once, first submit to the last completion seen (jobs/s);
(b) submit-to-start latency of jobs submitted open-loop at --rate per second for --lat-s: until
    the job starts on the worker. Flotilla's start is the `started` event's own timestamp (the
    daemon's clock as the job starts, like the peers' task body reading the clock); printed
    beside it, when a subscriber sees that event (journalled, then PubAck'd by the events stream).

Usage: python -m bench.bench_peers --peers DIR [--rounds 1] [--target-s 10] [--lat-s 10]
Bounded: about 3 minutes a round on a 2-core machine (the peers' scripts cap themselves too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import uvloop

from bench.bench_daemon import PREFIX, canary, daemon_config, pct, submit
from control.devstack.nats import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from schemas.subjects import Subjects

ENV = "FLOTILLA_PEERS_DIR"
SLOTS = 2
#: Each peer's script and the configurations of it that are measured.
PEERS = {"celery_redis": "default,late_ack", "arq": "tuned_2w"}
PEER_CAP_S = 900.0


@dataclass
class Figures:
    name: str
    rate: float  # jobs/s, (a)
    p50: float  # submit -> start, ms, (b)
    p99: float
    note: str = ""


def peers_dir(arg: str | None) -> Path:
    """The peers folder from --peers or $FLOTILLA_PEERS_DIR; exits with a clear error if absent."""
    raw = arg or os.environ.get(ENV)
    if not raw:
        raise SystemExit(f"no peers folder: pass --peers DIR or set {ENV}")
    path = Path(raw)
    missing = [p for p in PEERS if not (path / p / "run.sh").is_file()]
    if missing:
        raise SystemExit(f"{path} is not a peers folder: no {', '.join(missing)} run.sh")
    return path


# -- Flotilla ---------------------------------------------------------------------------------


class Seen:
    """When each job's events arrive (perf_counter) and the `started` event's own `ts`."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.started_ts: dict[str, float] = {}
        self.changed = asyncio.Event()

    async def on_event(self, msg: Any) -> None:
        event = json.loads(msg.data)
        job_id, kind = event.get("job_id"), event.get("kind")
        if job_id is None:
            return
        self.at.setdefault((job_id, kind), time.perf_counter())
        if kind == "started":
            self.started_ts[job_id] = float(event["ts"])
        self.changed.set()

    async def wait(self, job_ids: list[str], kind: str, within: float) -> float:
        deadline = time.monotonic() + within
        while not all((j, kind) in self.at for j in job_ids):
            if time.monotonic() > deadline:
                done = sum((j, kind) in self.at for j in job_ids)
                raise SystemExit(f"timed out: {done}/{len(job_ids)} jobs reached {kind}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        return max(self.at[(j, kind)] for j in job_ids)


async def flotilla(n: int, rate: float, lat_s: float, tag: str) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats")
        await server.start()
        nc = None
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream(timeout=10)
            await ensure_topology(js, Subjects(PREFIX), TopologySettings(pools=["cpu"]))
            seen = Seen()
            await nc.subscribe(f"{PREFIX}.events.>", cb=seen.on_event)
            d = Daemon(daemon_config(server.url, root / "node", root, slots={"cpu": SLOTS}))
            await d.start()
            try:
                warm = [f"{tag}-warm-{i}" for i in range(20)]
                await asyncio.gather(*(submit(js, canary(j), "high") for j in warm))
                await seen.wait(warm, "completed", 60)
                # (a) a burst, first submit to the last `completed` seen
                burst = [f"{tag}-burst-{i}" for i in range(n)]
                times = await asyncio.gather(*(submit(js, canary(j), "high") for j in burst))
                last = await seen.wait(burst, "completed", 60 + n / 50)
                burst_rate = n / (last - min(times))
                # (b) open loop at `rate`: submit -> start (the daemon's clock, and seen)
                sent: dict[str, tuple[float, float]] = {}
                t0, count = time.monotonic(), int(rate * lat_s)
                for i in range(count):
                    delay = t0 + i / rate - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    job_id = f"{tag}-paced-{i}"
                    wall = time.time()
                    sent[job_id] = (wall, await submit(js, canary(job_id), "high"))
                await seen.wait(list(sent), "completed", 60)
            finally:
                await d.stop()
        finally:
            if nc is not None:
                await nc.close()
            await server.stop()
    own = [(seen.started_ts[j] - w) * 1000 for j, (w, _) in sent.items()]
    heard = [(seen.at[(j, "started")] - p) * 1000 for j, (_, p) in sent.items()]
    note = f"started seen p50/p99 {statistics.median(heard):.2f}/{pct(heard, 0.99):.2f} ms"
    return Figures("flotilla", burst_rate, statistics.median(own), pct(own, 0.99), note)


# -- peers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def peer(folder: Path, name: str, configs: str, args: argparse.Namespace) -> list[Figures]:
    """Run one peer's script; its last stdout line is the JSON it measured."""
    argv = ["bash", str(folder / name / "run.sh"), "--only", configs, "--target-s",
            str(args.target_s), "--lat-s", str(args.lat_s), "--rate", str(args.rate)]  # fmt: skip
    if name == "celery_redis":
        argv.append("--skip-kill")
    # A redis-server of its own on a free port (the script refuses a port in use).
    env = {**os.environ, "PEERS_REDIS_PORT": str(free_port())}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), PEER_CAP_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise SystemExit(f"{name} ran past {PEER_CAP_S:.0f} s") from None
    lines = out.decode().strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = err.decode()[-2000:]
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{tail}")
    result = json.loads(lines[-1])
    figures = []
    for config, got in result["configs"].items():
        lat = got["latency"]["submit_to_start"]
        rate = float(got["throughput"]["tasks_per_s"])
        figures.append(Figures(f"{name}/{config}", rate, lat["p50_ms"], lat["p99_ms"]))
    return figures


# -- the table --------------------------------------------------------------------------------


def table(rows: list[Figures]) -> str:
    ours = rows[0]
    lines = [
        f"{'system':24s} {'jobs/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}  "
        f"{'rate ratio':>10s} {'p50 ratio':>10s}",
    ]
    for r in rows:
        ratio = ours.rate / r.rate if r.rate else float("nan")
        p50 = r.p50 / ours.p50 if ours.p50 else float("nan")
        lines.append(
            f"{r.name:24s} {r.rate:9.1f} {r.p50:8.2f} {r.p99:8.2f}  {ratio:10.2f} {p50:10.2f}"
        )
    lines.append("rate ratio: Flotilla's rate / this one's (>= 1: Flotilla as fast or faster);")
    lines.append("p50 ratio: this one's p50 / Flotilla's (>= 1: Flotilla starts as soon or sooner)")
    if ours.note:
        lines.append(f"flotilla: {ours.note}")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.ERROR)
    folder = peers_dir(args.peers)
    print(f"no-op dispatch, one daemon with {SLOTS} slots vs peers with 2 worker processes; "
          f"burst of {args.n}; latency at {args.rate:g}/s for {args.lat_s:g} s")  # fmt: skip
    for rnd in range(1, args.rounds + 1):
        rows = [await flotilla(args.n, args.rate, args.lat_s, f"r{rnd}")]
        for name, configs in PEERS.items():
            if name in args.skip.split(","):
                continue
            rows += await peer(folder, name, configs, args)
        print(f"round {rnd} (load average {os.getloadavg()[0]:.2f})")
        print(table(rows), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", help=f"the peers folder (default ${ENV})")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--n", type=int, default=2000, help="Flotilla's burst size")
    ap.add_argument("--target-s", type=float, default=10.0, help="the peers' burst length")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--lat-s", type=float, default=10.0)
    ap.add_argument("--skip", default="", help="peers not to run, e.g. arq")
    return ap.parse_args(argv)


if __name__ == "__main__":
    uvloop.run(main(parse(sys.argv[1:])))
