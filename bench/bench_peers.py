"""No-op dispatch next to its peers, in one run: Flotilla, Celery + Redis, arq, with the ratios.

Flotilla: `canary` jobs (no ffmpeg) through one in-process daemon with 2 slots and its default
durability (journal FULL sync for what gates an ack, the terminal event PubAck'd before the ack,
the embedded nats-server's `sync_interval: always`). The peers: the ready scripts of a peers
folder (`--peers DIR` or `$FLOTILLA_PEERS_DIR`; each `<peer>/run.sh` sets its system up, runs
its own measurement and prints one JSON line): Celery 5.7 + Redis, prefork with 2 worker
processes, and arq, tuned, 2 worker processes. All run one after another, never at once.
The peers' Redis keeps nothing on disk; `--fsync-peer` also runs Celery on a Redis that appends
every write to its log and fsyncs it before answering (`appendfsync always`, from a copy of the
peers folder): the same peer at the broker durability Flotilla runs with.

Both measures are the peers' own:
(a) throughput: N jobs submitted at once, first submit to the last completion seen (jobs/s);
(b) submit-to-start latency of jobs submitted open-loop at --rate per second for --lat-s: until
    the job starts on the worker. Flotilla's start is the `started` event's own timestamp (the
    daemon's clock as the job starts, like the peers' task body reading the clock); printed
    beside it, when a subscriber sees that event (journalled, then PubAck'd by the events stream).

Figures, and what the per-job path does to earn them: README, "Dispatch speed, next to its
peers" (also `make bench-peers PEERS=DIR`).

Usage: python bench/bench_peers.py --peers DIR [--rounds 1] [--target-s 10] [--lat-s 10]
       [--skip arq] [--fsync-peer]
Bounded: about 3 minutes a round on a 2-core machine (the peers' scripts cap themselves too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import nats
import uvloop
from nats.js import JetStreamContext

from control.devstack.nats import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from daemon.config import DaemonConfig
from daemon.main import serve_daemon
from schemas.subjects import Subjects

PREFIX = "bench"
ENV = "FLOTILLA_PEERS_DIR"
SLOTS = 2
#: Each peer's script and the configurations of it that are measured.
PEERS = {"celery_redis": "default,late_ack", "arq": "tuned_2w"}
PEER_CAP_S = 900.0
#: How the peers' script starts Redis (no persistence at all), and what `--fsync-peer` makes
#: of it: every write appended to Redis' log and fsynced before the reply, as nats-server's
#: `sync_interval: always` does for every write of Flotilla's.
REDIS_AS_SHIPPED = "--appendonly no"
REDIS_FSYNCED = "--appendonly yes --appendfsync always"


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


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def canary(job_id: str) -> dict[str, Any]:
    op, req = {"op": "canary"}, {"pool": "cpu"}
    return {"job_id": job_id, "tenant": "canary", "input": "canary://", "operation": op,
            "requirements": req, "max_attempts": 1}  # fmt: skip


async def submit(js: JetStreamContext, spec: dict[str, Any], priority: str = "normal") -> float:
    """Publish a job as any producer would; returns the time just before the publish."""
    spec = {"v": 1, "priority": priority, **spec}
    subject = f"{PREFIX}.submit.{spec['tenant']}.cpu.{priority}.{spec['job_id']}"
    sent = time.perf_counter()
    await js.publish(subject, json.dumps(spec).encode(), headers={"Nats-Msg-Id": spec["job_id"]})
    return sent


def daemon_config(url: str, state: Path, root: Path) -> dict[str, Any]:
    return {
        "node_id": state.name,
        "nats": {"url": url, "prefix": PREFIX},
        "state_dir": str(state),
        "allowed_roots": [str(root)],
        "pools": ["cpu"],
        "slots": {"cpu": SLOTS},
        "metrics_port": 0,  # no exporter: no fixed port
    }


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(server: NatsServer) -> int:
    """The embedded nats-server's PID (devstack keeps its process private; read only here)."""
    proc = server._proc
    if proc is None:
        raise SystemExit("nats-server is not running")
    return proc.pid


async def serve(config_json: str) -> None:
    """The daemon's own process (`--serve-daemon`): as `flotilla daemon` runs it, until SIGTERM."""
    logging.basicConfig(level=logging.ERROR)
    cfg = msgspec.convert(json.loads(config_json), DaemonConfig)
    raise SystemExit(await serve_daemon(Daemon(cfg)))


async def flotilla(n: int, rate: float, lat_s: float, tag: str) -> Figures:
    """One daemon in its own process (2 slots), an embedded nats-server, this process submits."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = NatsServer(root / "nats")
        await server.start()
        nc, proc = None, None
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream(timeout=10)
            await ensure_topology(js, Subjects(PREFIX), TopologySettings(pools=["cpu"]))
            seen = Seen()
            await nc.subscribe(f"{PREFIX}.events.>", cb=seen.on_event)
            raw = json.dumps(daemon_config(server.url, root / "node", root))
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--serve-daemon", raw
            )
            warm = [f"{tag}-warm-{i}" for i in range(20)]  # its first jobs are its readiness
            await asyncio.gather(*(submit(js, canary(j), "high") for j in warm))
            await seen.wait(warm, "completed", 120)
            # (a) a burst, first submit to the last `completed` seen
            cpu0 = cpu_seconds(proc.pid), cpu_seconds(server_pid(server))
            burst = [f"{tag}-burst-{i}" for i in range(n)]
            times = await asyncio.gather(*(submit(js, canary(j), "high") for j in burst))
            last = await seen.wait(burst, "completed", 60 + n / 20)
            burst_rate = n / (last - min(times))
            cpu1 = cpu_seconds(proc.pid), cpu_seconds(server_pid(server))
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
            if proc is not None and proc.returncode is None:
                proc.terminate()  # drains: nothing runs by now
                try:
                    await asyncio.wait_for(proc.wait(), 60)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
            if nc is not None:
                await nc.close()
            await server.stop()
    own = [(seen.started_ts[j] - w) * 1000 for j, (w, _) in sent.items()]
    heard = [(seen.at[(j, "started")] - p) * 1000 for j, (_, p) in sent.items()]
    daemon_ms, server_ms = ((b - a) * 1000 / n for a, b in zip(cpu0, cpu1, strict=True))
    note = (
        f"started event seen p50/p99 {statistics.median(heard):.2f}/{pct(heard, 0.99):.2f} ms; "
        f"CPU per job in the burst: daemon {daemon_ms:.2f} ms, nats-server {server_ms:.2f} ms"
    )
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
        cpu = got["throughput"].get("cpu_ms_per_task", {})
        note = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        figures.append(Figures(f"{name}/{config}", rate, lat["p50_ms"], lat["p99_ms"], note))
    return figures


def fsynced_peers(folder: Path, into: Path) -> Path:
    """A copy of the peers folder whose Redis fsyncs every write before answering it."""
    copy = into / "peers-fsync"
    shutil.copytree(folder, copy)
    script = copy / "_redis.sh"
    text = script.read_text()
    if text.count(REDIS_AS_SHIPPED) != 1:
        raise SystemExit(f"{folder / '_redis.sh'}: no single {REDIS_AS_SHIPPED!r} to change")
    script.write_text(text.replace(REDIS_AS_SHIPPED, REDIS_FSYNCED))
    return copy


# -- the table --------------------------------------------------------------------------------


def table(rows: list[Figures]) -> str:
    ours = rows[0]
    lines = [
        f"{'system':28s} {'jobs/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s}  "
        f"{'rate ratio':>10s} {'p50 ratio':>10s}",
    ]
    for r in rows:
        ratio = ours.rate / r.rate if r.rate else float("nan")
        p50 = r.p50 / ours.p50 if ours.p50 else float("nan")
        lines.append(
            f"{r.name:28s} {r.rate:9.1f} {r.p50:8.2f} {r.p99:8.2f}  {ratio:10.2f} {p50:10.2f}"
        )
    lines.append("rate ratio: Flotilla's rate / this one's (>= 1: Flotilla as fast or faster);")
    lines.append("p50 ratio: this one's p50 / Flotilla's (>= 1: Flotilla starts as soon or sooner)")
    lines += [f"{r.name}: {r.note}" if r is ours else f"{r.name}: CPU ms per job: {r.note}"
              for r in rows if r.note]  # fmt: skip
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
        if args.fsync_peer:
            with tempfile.TemporaryDirectory() as tmp:
                durable = fsynced_peers(folder, Path(tmp))
                for fig in await peer(durable, "celery_redis", PEERS["celery_redis"], args):
                    fig.name = fig.name.replace("celery_redis", "celery_redis+fsync")
                    rows.append(fig)
        print(f"round {rnd} (load average {os.getloadavg()[0]:.2f})")
        print(table(rows), flush=True)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve-daemon", metavar="CONFIG_JSON", help=argparse.SUPPRESS)
    ap.add_argument("--peers", help=f"the peers folder (default ${ENV})")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--n", type=int, default=2000, help="Flotilla's burst size")
    ap.add_argument("--target-s", type=float, default=10.0, help="the peers' burst length")
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--lat-s", type=float, default=10.0)
    ap.add_argument("--skip", default="", help="peers not to run, e.g. arq")
    ap.add_argument("--fsync-peer", action="store_true",
                    help="also run Celery with its Redis fsyncing every write, as the broker "
                         "under Flotilla does")  # fmt: skip
    return ap.parse_args(argv)


if __name__ == "__main__":
    parsed = parse(sys.argv[1:])
    uvloop.run(serve(parsed.serve_daemon) if parsed.serve_daemon else main(parsed))
