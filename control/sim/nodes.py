"""One simulator process: many daemons (`daemon.app.Daemon`, unchanged) on one uvloop loop.

Started by the runner as `python -m control.sim.nodes CONFIG.json`. Each node is a whole daemon
(journal, outbox, pullers, slots, heartbeat, control listener, its own NATS connection) given
synthesized capabilities instead of a probe and the stand-in (control/sim/standin.py) instead of
ffmpeg. Once every node has started it writes a manifest (which classes run, where each journal
is) and prints `ready`; SIGTERM stops every node; SIGKILL is how the runner kills a node.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from common.version import VERSION
from control.sim.niceness import autogroup_nice, lower_priority
from control.sim.standin import run_standin
from daemon.app import Daemon
from daemon.config import DaemonConfig
from daemon.ffmpeg.tools import find_tools
from schemas.common import PROTOCOL
from schemas.nodes import CpuInfo, FfmpegInfo, NodeCapabilities

log = logging.getLogger("flotilla.sim")
#: Nodes started at once: each opens a journal and a NATS connection.
START_BATCH = 25
STOP_LIMIT_S = 60.0
ENCODERS = ["aac", "libopus", "libsvtav1", "libvpx-vp9", "libx264", "libx265", "mjpeg", "png"]


class WorkerConfig(msgspec.Struct, kw_only=True):
    nodes: list[str]
    nats_url: str
    prefix: str
    state_root: str
    allowed_root: str
    slots: dict[str, int]
    ack_wait: float
    daemon: dict[str, Any] = {}
    manifest: str
    #: Added to the process's niceness before any node starts (`Scenario.nodes_nice`).
    nice: int = 0


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard one: a node holds a socket and its journal's files."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def capabilities(
    node_id: str, slots: dict[str, int], ffmpeg: str, disk: tuple[int, int]
) -> NodeCapabilities:
    """What a probe would find on a node with `slots`; the disk is the journals' own (heartbeats
    report its free space, and a made-up total would read as a full disk)."""
    cores = 2 * sum(slots.values())
    return NodeCapabilities(
        node_id=node_id,
        hostname=f"sim-{node_id}",
        daemon_version=VERSION,
        protocol=PROTOCOL,
        cpu=CpuInfo(model="simulated", physical_cores=cores // 2, logical_cores=cores),
        memory_total_bytes=32 << 30,
        disk_total_bytes=disk[0],
        disk_free_bytes=disk[1],
        ffmpeg=FfmpegInfo(path=ffmpeg, version="simulated", encoders=ENCODERS),
        verified_encoders=ENCODERS,
        pools=sorted(slots),
        slots=dict(slots),
    )


def daemon_config(conf: WorkerConfig, node_id: str) -> DaemonConfig:
    raw: dict[str, Any] = {
        "node_id": node_id,
        "state_dir": str(Path(conf.state_root) / node_id),
        "allowed_roots": [conf.allowed_root],
        "metrics_port": 0,
        "threads_per_job": 1,
        "ack_wait": conf.ack_wait,
        "pools": sorted(conf.slots),
        "slots": conf.slots,
        "nats": {"url": conf.nats_url, "prefix": conf.prefix},
        **conf.daemon,
    }
    return msgspec.convert(raw, DaemonConfig)


def manifest(daemons: list[Daemon]) -> dict[str, Any]:
    def name(obj: object) -> str:
        return f"{type(obj).__module__}.{type(obj).__qualname__}"

    return {
        d.cfg.node_id: {
            "daemon": name(d),
            "journal": name(d.backend.raw_journal),
            "journal_path": str(d.cfg.journal_path),
            "operation": f"{d.deps.run_operation.__module__}.{d.deps.run_operation.__qualname__}",
            "nice": os.nice(0),
            "autogroup_nice": autogroup_nice(),
        }
        for d in daemons
    }


async def serve(conf: WorkerConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ffmpeg = find_tools().ffmpeg
    await asyncio.to_thread(Path(conf.state_root).mkdir, parents=True, exist_ok=True)
    usage = await asyncio.to_thread(shutil.disk_usage, conf.state_root)
    disk = (usage.total, usage.free)
    daemons = [
        Daemon(daemon_config(conf, n), capabilities=capabilities(n, conf.slots, ffmpeg, disk),
               operation_runner=run_standin)
        for n in conf.nodes
    ]  # fmt: skip
    started: list[Daemon] = []
    try:
        for i in range(0, len(daemons), START_BATCH):
            batch = daemons[i : i + START_BATCH]
            await asyncio.gather(*(d.start() for d in batch))
            started += batch
        text = json.dumps(manifest(daemons))
        await asyncio.to_thread(Path(conf.manifest).write_text, text)
        print(f"ready {len(daemons)}", flush=True)
        waits = [asyncio.create_task(d.stopped.wait()) for d in daemons]
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *waits], return_when=asyncio.FIRST_COMPLETED)
        failed = [d.cfg.node_id for d in daemons if d.stopped.is_set()]
        if failed:
            log.error("nodes stopped by themselves: %s", failed)
        return 1 if failed and not stop.is_set() else 0
    finally:
        ends = [asyncio.wait_for(d.stop(force=True), STOP_LIMIT_S) for d in started]
        results = await asyncio.gather(*ends, return_exceptions=True)
        stuck = [d for d, r in zip(started, results, strict=True) if isinstance(r, BaseException)]
        if stuck:
            log.warning("%d node(s) did not stop within %.0f s: %s", len(stuck), STOP_LIMIT_S,
                        [d.cfg.node_id for d in stuck][:10])  # fmt: skip


def main() -> int:
    import uvloop

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    raise_fd_limit()
    conf = msgspec.json.decode(Path(sys.argv[1]).read_bytes(), type=WorkerConfig)
    if conf.nice:
        lower_priority(conf.nice)
    code = uvloop.run(serve(conf))
    # A node that did not stop left its journal's worker thread running, which would hold the
    # process at exit for ever; what it committed is on disk (as after a crash).
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
