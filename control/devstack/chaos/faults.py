"""The faults, one class each. `episode()` injects one bounded fault and brings the part back.

Every wait is bounded: a precondition that does not come (no ffmpeg running to kill, no stream
leader) is noted on the episode and the fault is injected anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import psutil

from common.natsconn import NatsSettings, connect
from control.cli.apiclient import ApiClient
from control.cli.nodes import all_nodes
from control.devstack.chaos import diskfill
from control.devstack.chaos.ledger import Episode, Ledger
from control.devstack.chaos.proxy import TcpProxy
from control.devstack.fleet import DevFleet
from control.devstack.nats import NatsServer
from control.devstack.natscluster import NatsCluster
from schemas.subjects import Subjects

#: Bound on waiting for a part to come back (API answering, a stream leader, ffmpeg running).
RECOVER_LIMIT_S = 120.0
MID_ENCODE_LIMIT_S = 60.0
#: How long a killed NATS server stays down.
NATS_DOWN_S = 3.0


@dataclass
class Ctx:
    fleet: DevFleet
    ledger: Ledger
    rng: random.Random
    proxy: TcpProxy | None = None
    cut_node: str = ""
    disk_node: str = ""
    #: "tmpfs" (a real full file system) or "watermark" (configuration only).
    disk_mode: str = "tmpfs"

    @property
    def settings(self) -> NatsSettings:
        return NatsSettings(url=self.fleet.nats_url, prefix=self.fleet.prefix)

    @property
    def daemons(self) -> list[str]:
        return sorted(n for n in self.fleet.procs if n != "control")


async def wait_api(ctx: Ctx, online: int = 1, limit_s: float = RECOVER_LIMIT_S) -> bool:
    """Until the control plane answers node.list with at least `online` nodes online."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            async with ApiClient(ctx.settings, timeout=5.0) as client:
                nodes = await all_nodes(client)
            if sum(1 for n in nodes if n.state == "online") >= online:
                return True
        await asyncio.sleep(1.0)
    return False


def ffmpeg_running(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "ffmpeg" in child.name():
                    return True
    return False


class Fault:
    phase: ClassVar[str]

    async def episode(self, ctx: Ctx) -> Episode:
        raise NotImplementedError


class DaemonKill(Fault):
    """SIGKILL a daemon's whole process group while ffmpeg encodes there, then start it again."""

    phase = "daemon_kill"

    async def episode(self, ctx: Ctx) -> Episode:
        deadline = time.monotonic() + MID_ENCODE_LIMIT_S
        busy: list[str] = []
        while time.monotonic() < deadline:
            busy = [n for n in ctx.daemons if ffmpeg_running(ctx.fleet.procs[n].pid)]
            if busy:
                break
            await asyncio.sleep(0.2)
        target = ctx.rng.choice(busy or ctx.daemons)
        ep = Episode(self.phase, target, time.time(), note="" if busy else "no ffmpeg running")
        await ctx.fleet.restart_node(target, crash=True)
        ep.end = time.time()
        return ep


class NatsRestart(Fault):
    """Stop the (single) nats-server with SIGTERM or SIGKILL and start it again."""

    def __init__(self, sig: signal.Signals) -> None:
        self.sig = sig
        self.phase = "nats_sigterm" if sig == signal.SIGTERM else "nats_sigkill"  # type: ignore[misc]

    async def episode(self, ctx: Ctx) -> Episode:
        server = ctx.fleet.stack.nats
        assert isinstance(server, NatsServer)
        ep = Episode(self.phase, server.name, time.time())
        if self.sig == signal.SIGTERM:
            await server.stop()
        else:
            await server.kill()
        await asyncio.sleep(NATS_DOWN_S)
        await server.start()
        ep.end = time.time()
        if not await wait_api(ctx):
            ep.note = "API not back"
        return ep


class LeaderKill(Fault):
    """SIGKILL the server leading a replicated stream (jobs and events in turn), then restart it."""

    phase = "leader_kill"

    def __init__(self) -> None:
        self.turn = 0

    async def episode(self, ctx: Ctx) -> Episode:
        cluster = ctx.fleet.stack.nats
        assert isinstance(cluster, NatsCluster)
        subjects = Subjects(ctx.fleet.prefix)
        stream = [subjects.jobs_stream, subjects.events_stream][self.turn % 2]
        self.turn += 1
        leader = await _leader(ctx, stream)
        server = cluster.server(leader) if leader else ctx.rng.choice(cluster.servers)
        ep = Episode(self.phase, f"{server.name} ({stream})", time.time())
        if not leader:
            ep.note = "no leader found"
        await server.kill()
        await asyncio.sleep(NATS_DOWN_S)
        await server.start()
        ep.end = time.time()
        if not await _leader(ctx, stream, current=True):
            ep.note = "stream not current again"
        return ep


async def _leader(ctx: Ctx, stream: str, *, current: bool = False) -> str | None:
    """The stream's leader; with `current`, only once every replica has caught up."""
    deadline = time.monotonic() + RECOVER_LIMIT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            nc = await connect(ctx.settings, name="flotilla-chaos", reconnect=False)
            try:
                info = await nc.jetstream(timeout=5).stream_info(stream)
            finally:
                await nc.close()
            cl = info.cluster
            if cl is not None and cl.leader:
                peers = cl.replicas or []
                if not current or all(p.current and not p.offline for p in peers):
                    return cl.leader
        await asyncio.sleep(1.0)
    return None


class PostgresOutage(Fault):
    """Stop PostgreSQL (fast shutdown) for `down_s` seconds, then start it again."""

    phase = "postgres_outage"

    def __init__(self, down_s: float) -> None:
        self.down_s = down_s

    async def episode(self, ctx: Ctx) -> Episode:
        pg = ctx.fleet.stack.postgres
        ep = Episode(self.phase, "postgres", time.time())
        await pg.stop()
        await asyncio.sleep(self.down_s)
        await pg.start()
        ep.end = time.time()
        return ep


class ControlKill(Fault):
    """SIGKILL the control plane and start it again."""

    phase = "control_kill"

    async def episode(self, ctx: Ctx) -> Episode:
        ep = Episode(self.phase, "control", time.time())
        await ctx.fleet.restart_node("control", crash=True)
        ep.end = time.time()
        if not await wait_api(ctx):
            ep.note = "API not back"
        return ep


class NetworkCut(Fault):
    """Sever one daemon's link to NATS (its proxy) for `cut_s` seconds."""

    phase = "network_cut"

    def __init__(self, cut_s: float) -> None:
        self.cut_s = cut_s

    async def episode(self, ctx: Ctx) -> Episode:
        assert ctx.proxy is not None
        ep = Episode(self.phase, ctx.cut_node, time.time())
        ctx.proxy.sever()
        try:
            await asyncio.sleep(self.cut_s)
        finally:
            ctx.proxy.restore()
        ep.end = time.time()
        return ep


class DiskFull(Fault):
    """Fill one daemon's work dir for `full_s` seconds (see diskfill for the two modes)."""

    phase = "disk_full"

    def __init__(self, full_s: float) -> None:
        self.full_s = full_s

    async def episode(self, ctx: Ctx) -> Episode:
        node = ctx.disk_node
        work = ctx.fleet.state_dir(node) / "work"
        ep = Episode(self.phase, node, time.time())
        if ctx.disk_mode == "tmpfs":
            written = await diskfill.fill(work)
            ep.note = f"tmpfs filled ({written >> 20} MiB, {diskfill.free_bytes(work)} B free)"
            try:
                await asyncio.sleep(self.full_s)
            finally:
                await diskfill.release(work)
        else:
            ep.note = "watermark 100% (no mount here)"
            await _restart_with(ctx, node, "disk_low_watermark_percent = 100.0\n")
            await asyncio.sleep(self.full_s)
            await _restart_with(ctx, node, "")
        ep.end = time.time()
        return ep


async def _restart_with(ctx: Ctx, node: str, extra: str) -> None:
    """Restart `node` (SIGTERM, then SIGKILL after a grace) with `extra` top-level config keys."""
    conf = ctx.fleet.data_dir / f"{node}.toml"
    base = Path(str(conf) + ".orig")
    if not await asyncio.to_thread(base.exists):
        await asyncio.to_thread(conf.rename, base)
    text = await asyncio.to_thread(base.read_text)
    await asyncio.to_thread(conf.write_text, extra + text)
    await ctx.fleet.restart_node(node, grace=30.0)
