"""Redelivery benchmark: how soon a SIGKILLed daemon's job runs again once the daemon is back.

A real daemon (a subprocess, shipped defaults: `ack_wait` 60 s) starts a long transcode; it is
SIGKILLed mid-encode and started again at once on the same journal. Timed from the restart to
the job's next `accepted` (its next run starts), for ROUNDS rounds; printed with the ratio to
`ack_wait`, which is what the job waited before the restart handed it back (JetStream's own
redelivery). The restart itself (Python start-up, probe, connect) is part of the figure.

Everything runs here: an embedded nats-server, a temp directory, the bundled ffmpeg. Bounded:
about a minute on a 2-core machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats
import uvloop
from nats.aio.msg import Msg

from control.devstack.nats import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.ffmpeg.tools import find_tools
from schemas.subjects import Subjects

ROUNDS = 3
WITHIN = 120.0


class Seen:
    def __init__(self) -> None:
        self.at: dict[tuple[str, str, int], float] = {}
        self.changed = asyncio.Event()

    async def on_event(self, msg: Msg) -> None:
        e = json.loads(msg.data)
        self.at.setdefault((e.get("job_id", ""), e["kind"], e.get("attempt", 0)), time.monotonic())
        self.changed.set()

    async def wait(self, job_id: str, kind: str, attempt: int) -> float:
        key = (job_id, kind, attempt)
        async with asyncio.timeout(WITHIN):
            while key not in self.at:
                self.changed.clear()
                await self.changed.wait()
        return self.at[key]


async def spawn(cfg_path: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "daemon.main", "--config", str(cfg_path),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def config(node: str, prefix: str, url: str, root: Path) -> str:
    """daemon.toml of one round's node: shipped defaults but for the test-encode probe."""
    return (
        f'node_id = "{node}"\nstate_dir = "{root / node}"\nallowed_roots = ["{root}"]\n'
        'pools = ["cpu"]\nverify_hw_encoders = false\nmetrics_port = 0\n'
        f'[slots]\ncpu = 1\n[nats]\nurl = "{url}"\nprefix = "{prefix}"\n'
    )


async def main() -> None:
    logging.basicConfig(level=logging.ERROR)
    tools = find_tools()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src.mp4"
        make = await asyncio.create_subprocess_exec(
            tools.ffmpeg, "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", "testsrc2=size=640x480:rate=25:duration=20",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(src),
        )  # fmt: skip
        assert await make.wait() == 0
        server = NatsServer(root / "nats")
        await server.start()
        nc = await nats.connect(server.url)
        proc: asyncio.subprocess.Process | None = None
        try:
            js = nc.jetstream(timeout=10)
            topo = TopologySettings(pools=["cpu"])
            figures = []
            for n in range(ROUNDS):  # each round its own prefix and node: no leftovers
                prefix, job_id = f"bench{n}", f"r{n}"
                await ensure_topology(js, Subjects(prefix), topo)
                seen = Seen()
                await nc.subscribe(f"{prefix}.events.>", cb=seen.on_event)
                cfg_path = root / f"b{n}.toml"
                cfg_path.write_text(config(f"b{n}", prefix, server.url, root))
                spec = {
                    "v": 1, "job_id": job_id, "input": f"file://{src}",
                    "output": f"file://{root / f'{job_id}.mp4'}",
                    "operation": {"op": "transcode", "codec": "h264", "preset": "slow"},
                }  # fmt: skip
                proc = await spawn(cfg_path)
                subject = f"{prefix}.submit.default.cpu.normal.{job_id}"
                await js.publish(subject, json.dumps(spec).encode(),
                                 headers={"Nats-Msg-Id": job_id})  # fmt: skip
                await seen.wait(job_id, "started", 1)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
                restart = time.monotonic()
                proc = await spawn(cfg_path)
                figures.append(await seen.wait(job_id, "accepted", 2) - restart)
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
            med = statistics.median(figures)
            print(
                f"restart -> next run of the interrupted job, {ROUNDS} rounds: "
                f"min {min(figures):.2f} s, median {med:.2f} s, max {max(figures):.2f} s"
            )
            print(f"ratio to ack_wait ({topo.ack_wait:.0f} s, the wait without the hand-back): "
                  f"{med / topo.ack_wait:.3f}")  # fmt: skip
        finally:
            if proc is not None and proc.returncode is None:
                proc.kill()
                with contextlib.suppress(Exception):
                    await proc.wait()
            await nc.close()
            await server.stop()


if __name__ == "__main__":
    uvloop.run(main())
