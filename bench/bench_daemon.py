"""Daemon benchmark: what the whole daemon path costs next to ffmpeg, and how fast it dispatches.

(a) N small transcodes submitted over NATS to one in-process daemon (slots = P), timed from the
    first submit to the last `completed` event, against the same ffmpeg argvs (taken from the
    `started` events) run by hand with the same parallelism P: prints the ratio per P.
(b) `canary` jobs (no ffmpeg) through one daemon with the default config (journal durability on,
    the embedded nats-server's `sync_interval: always`): the dispatch rate of a burst (jobs/s,
    first submit to last `completed`), and submit-to-start latency p50/p99 of jobs submitted one
    every PACE seconds (a mostly idle node, woken by each submit) and of the burst (a queue).

(b) runs the daemon in this process, next to the submitting client; bench/bench_peers.py runs it
in its own process with 2 slots, next to Celery + Redis and arq in the same run (README,
"Dispatch speed, next to its peers", has the figures).

Everything runs here: an embedded nats-server on free loopback ports, a temp directory, the
bundled ffmpeg. Ratios are measured against baselines run in the same process tree and run.
Bounded: about a minute and a half on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import uvloop
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from control.devstack.nats import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from daemon.config import DaemonConfig
from daemon.ffmpeg.tools import find_tools
from schemas.subjects import Subjects

PREFIX = "bench"
N_TRANSCODES = 8
PARALLEL = (1, 2)
N_BURST = 200
N_PACED = 30
PACE = 0.3
WITHIN = 60.0


class Clock:
    """Arrival times (perf_counter) of every event, by (job_id, kind), plus started argvs."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.argv: dict[str, list[str]] = {}
        self.changed = asyncio.Event()

    async def on_event(self, msg: Msg) -> None:
        event = json.loads(msg.data)
        job_id, kind = event.get("job_id"), event.get("kind")
        if job_id is None:
            return
        self.seen.setdefault((job_id, kind), time.perf_counter())
        if kind == "started":
            self.argv[job_id] = event["command"]
        self.changed.set()

    async def wait(self, job_ids: list[str], kind: str) -> float:
        """When the last of `job_ids` reached `kind`; bounded by WITHIN."""
        deadline = time.monotonic() + WITHIN
        while not all((j, kind) in self.seen for j in job_ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {kind} of {len(job_ids)} jobs")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        return max(self.seen[(j, kind)] for j in job_ids)


async def sh(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    if await asyncio.wait_for(proc.wait(), WITHIN) != 0:
        raise SystemExit(f"ffmpeg failed: {argv}")


async def submit(js: JetStreamContext, spec: dict[str, Any], priority: str = "normal") -> float:
    """Publish a job as any producer would; returns the time just before the publish."""
    spec = {"v": 1, "priority": priority, **spec}
    subject = f"{PREFIX}.submit.{spec.get('tenant', 'default')}.cpu.{priority}.{spec['job_id']}"
    sent = time.perf_counter()
    await js.publish(subject, json.dumps(spec).encode(), headers={"Nats-Msg-Id": spec["job_id"]})
    return sent


def daemon_config(url: str, state: Path, root: Path, **over: Any) -> DaemonConfig:
    raw = {
        "node_id": state.name,
        "nats": {"url": url, "prefix": PREFIX},
        "state_dir": str(state),
        "allowed_roots": [str(root)],
        "pools": ["cpu"],
        "metrics_port": 0,  # no exporter: no fixed port
        **over,
    }
    return msgspec.convert(raw, DaemonConfig)


async def transcodes(js: JetStreamContext, clock: Clock, url: str, root: Path, src: Path) -> None:
    print(f"(a) {N_TRANSCODES} transcodes 2 s 320x240 -> 160x120 h264, submit -> completed")
    for p in PARALLEL:
        d = Daemon(daemon_config(url, root / f"tx{p}", root, slots={"cpu": p}, threads_per_job=1))
        await d.start()
        try:
            ids = [f"tx{p}-{i}" for i in range(N_TRANSCODES)]
            first = 0.0
            for i, job_id in enumerate(ids):
                op = {"op": "transcode", "codec": "h264", "width": 160, "height": 120}
                spec = {"job_id": job_id, "input": f"file://{src}", "operation": op}
                spec["output"] = f"file://{root / 'out' / f'{job_id}.mp4'}"
                sent = await submit(js, spec)
                first = sent if i == 0 else first
            daemon_wall = await clock.wait(ids, "completed") - first
        finally:
            await d.stop()
        # Same argv, output pointed elsewhere, same parallelism.
        gate = asyncio.Semaphore(p)

        async def by_hand(job_id: str, gate: asyncio.Semaphore = gate) -> None:
            async with gate:
                argv = clock.argv[job_id]
                await sh(*argv[:-1], f"file:{root / 'direct' / f'{job_id}.mp4'}")

        start = time.perf_counter()
        await asyncio.gather(*(by_hand(j) for j in ids))
        direct_wall = time.perf_counter() - start
        print(f"  parallelism {p}: daemon {daemon_wall:.3f} s, ffmpeg by hand {direct_wall:.3f} s")
        print(f"  parallelism {p}: ratio daemon/by-hand {daemon_wall / direct_wall:.3f}")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def canary(job_id: str) -> dict[str, Any]:
    op, req = {"op": "canary"}, {"pool": "cpu"}
    return {"job_id": job_id, "tenant": "canary", "input": "canary://", "operation": op,
            "requirements": req, "max_attempts": 1}  # fmt: skip


async def paced(js: JetStreamContext, clock: Clock, tag: str) -> str:
    sent: dict[str, float] = {}
    for i in range(N_PACED):
        job_id = f"paced-{tag}-{i}"
        sent[job_id] = await submit(js, canary(job_id), "high")
        await asyncio.sleep(PACE)
    await clock.wait(list(sent), "completed")
    lat = [(clock.seen[(j, "started")] - t) * 1000 for j, t in sent.items()]
    return f"p50 {statistics.median(lat):.1f} ms, p99 {pct(lat, 0.99):.1f} ms"


async def canaries(js: JetStreamContext, clock: Clock, url: str, root: Path) -> None:
    d = Daemon(daemon_config(url, root / "canary", root))
    await d.start()
    try:
        slots = d.slots.free_all()
        print(f"(b) canary jobs (priority high), one daemon, default config, slots {slots}")
        got = await paced(js, clock, "default")
        print(f"  paced, 1 every {PACE} s ({N_PACED} jobs): submit->started {got}")
        burst = [f"burst-{i}" for i in range(N_BURST)]
        times = await asyncio.gather(*(submit(js, canary(j), "high") for j in burst))
        last = await clock.wait(burst, "completed")
        rate = N_BURST / (last - min(times))
        lat = [(clock.seen[(j, "started")] - t) * 1000 for j, t in zip(burst, times, strict=True)]
        p50, p99 = statistics.median(lat), pct(lat, 0.99)
        print(f"  burst of {N_BURST}: {rate:.1f} jobs/s; submit->started "
              f"p50 {p50:.0f} ms, p99 {p99:.0f} ms (queued)")  # fmt: skip
    finally:
        await d.stop()
    # An idle node holds no pull open: the submit wakes it. fetch_timeout is only the fallback
    # poll (redeliveries, a refused wake subscription), so a short one should change nothing.
    fast = 0.5
    d = Daemon(daemon_config(url, root / "canary-fast", root, fetch_timeout=fast))
    await d.start()
    try:
        got = await paced(js, clock, "fast")
        print(f"  same paced run with fetch_timeout {fast} s: submit->started {got}")
    finally:
        await d.stop()


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)  # the numbers only, not the daemons' chatter
    tools = find_tools()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for sub in ("out", "direct"):
            (root / sub).mkdir()
        src = root / "src.mp4"
        await sh(
            tools.ffmpeg, "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2",
            "-f", "lavfi", "-i", "sine=frequency=1000:duration=2",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-shortest", str(src),
        )  # fmt: skip
        server = NatsServer(root / "nats")
        await server.start()
        nc: Client | None = None
        try:
            nc = await nats.connect(server.url)
            js = nc.jetstream(timeout=10)
            await ensure_topology(js, Subjects(PREFIX), TopologySettings(pools=["cpu"]))
            clock = Clock()
            await nc.subscribe(f"{PREFIX}.events.>", cb=clock.on_event)
            await transcodes(js, clock, server.url, root, src)
            await canaries(js, clock, server.url, root)
        finally:
            if nc is not None:
                await nc.close()
            await server.stop()


if __name__ == "__main__":
    uvloop.run(main())
