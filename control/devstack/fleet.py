"""`flotilla dev`: the whole fleet on one machine, on the embedded defaults.

Starts nats-server and PostgreSQL, creates the topology, then runs the control plane and N
daemons as real child processes (the same commands systemd runs), until stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from common.natsconn import NatsSettings, connect
from control.cli.context import save_fleet_context
from control.devstack.stack import EmbeddedStack, free_ports
from control.errors import CliError
from control.topology import TopologySettings, ensure_topology
from daemon.config import DaemonConfig, MediaSettings
from schemas.subjects import Subjects

DB_NAME = "flotilla"
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class NodeSettings:
    """Daemon settings every dev node gets besides the fleet's own (node id, NATS, state dir,
    roots, ports, ack wait). The defaults add nothing: the nodes run on the daemon's defaults."""

    #: The `[media]` table: input limits and remote inputs (say an http allow-list);
    #: None: the daemon's defaults (file:// inputs only).
    media: MediaSettings | None = None
    #: Slot overrides per pool (`[slots]`); empty: measured from the machine.
    slots: Mapping[str, int] = field(default_factory=dict)
    #: Other top-level daemon keys (say `disk_low_watermark_mb`), as TOML values.
    options: Mapping[str, object] = field(default_factory=dict)

    def toml(self) -> str:
        """These settings as TOML tables, to follow the rest of a daemon's config."""
        tables: dict[str, dict[str, Any]] = {}
        if self.media is not None:
            # Only what differs from the defaults: a node of an earlier release (a rolling
            # upgrade) refuses keys it does not know, such as a table added since (`s3`).
            default = msgspec.to_builtins(MediaSettings())
            media = msgspec.to_builtins(self.media)
            tables["media"] = {k: v for k, v in media.items() if default.get(k) != v}
        if self.slots:
            tables["slots"] = dict(self.slots)
        return "".join(_toml_table(name, values) for name, values in tables.items())

    def top_level(self) -> str:
        """The top-level keys, to go before any table."""
        return "".join(f"{key} = {_json(value)}\n" for key, value in self.options.items())


def _named(instance: str, control_toml: str) -> str:
    """The control config with its leader-lease name (top-level keys come first in TOML)."""
    return f'instance_id = "{instance}"\n' + control_toml


def _toml_table(name: str, values: dict[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in values.items() if v is not None]
    return "\n".join(lines) + "\n"


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) is not None else _json(key)


def _value(value: object) -> str:
    """A TOML value: nested tables (say `[media.s3]`) inline; TOML has no null, so unset keys
    are left out."""
    if isinstance(value, dict):
        pairs = (f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(pairs) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    # JSON strings, numbers and booleans are TOML values too.
    return _json(value)


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


@dataclass
class DevFleet:
    data_dir: Path
    nodes: int = 2
    roots: list[Path] = field(default_factory=list)
    prefix: str = "flotilla"
    #: JetStream ack wait (consumers and daemons): how soon a crashed node's jobs are redelivered.
    ack_wait: float = 120.0
    #: Settings every daemon gets on top of the dev defaults.
    node_settings: NodeSettings = field(default_factory=NodeSettings)
    #: More than 1: a NATS cluster of that many servers, with streams replicated up to R3.
    nats_servers: int = 1
    #: NATS URL per daemon where it differs from the fleet's (say through a proxy).
    node_nats_urls: dict[str, str] = field(default_factory=dict)
    #: Source tree of another release to run a daemon from (a mixed-version fleet); a node not
    #: named runs this one. Read at each (re)start, so an upgrade is: drop it, restart.
    node_release: dict[str, Path] = field(default_factory=dict)
    #: Fair-share pools, `{pool: {tenant: weight}}` (topology.shares).
    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    #: The CLI context written for this fleet (FLOTILLA_CONTEXT overrides); None writes none.
    context_name: str | None = "dev"
    #: Make that context the current one, which commands use when told no other.
    context_current: bool = True
    stack: EmbeddedStack = field(init=False)
    procs: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    metrics_ports: dict[str, int] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)
    context_path: Path | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.data_dir.resolve()
        self.stack = EmbeddedStack(self.data_dir, self.nats_servers)

    @property
    def replicas(self) -> int:
        return min(3, self.nats_servers)

    @property
    def nats_url(self) -> str:
        return self.stack.nats.url

    @property
    def database_url(self) -> str:
        return self.stack.postgres.dsn(DB_NAME)

    async def start(self) -> None:
        await self.stack.start()
        with contextlib.suppress(Exception):  # already there on a second run of the same data
            await self.stack.postgres.create_database(DB_NAME)
        settings = NatsSettings(url=self.nats_url, prefix=self.prefix)
        nc = await connect(settings, name="flotilla-dev", reconnect=False)
        try:
            topology = TopologySettings(
                ack_wait=self.ack_wait, replicas=self.replicas,
                shares={p: dict(w) for p, w in self.shares.items()},
            )  # fmt: skip
            await ensure_topology(nc.jetstream(), Subjects(self.prefix), topology)
            ports = free_ports(self.nodes + 1)
            config = _named("control", self._control_toml(ports[0]))
            await self._spawn("control", ["control", "run"], config)
            for i in range(1, self.nodes + 1):
                node = f"dev-{i}"
                await self._spawn(node, ["daemon"], self._daemon_toml(node, ports[i]))
            if self.context_name is not None:
                # The context names this fleet by its jobs stream, so a CLI never takes
                # another fleet that later listens on the same port for this one.
                extra = {"database_url": self.database_url, "data_dir": str(self.data_dir)}
                self.context_path = await save_fleet_context(
                    nc, settings, extra, self.context_name, make_current=self.context_current
                )
        finally:
            await nc.close()

    async def wait_ready(self, stop: asyncio.Event, limit_s: float = 180.0) -> None:
        """Until the control plane answers the API and lists every node online: what a command
        run right after `flotilla dev` says it is up needs (raises CliError after `limit_s`).
        Returns early once `stop` is set (Ctrl-C while starting)."""
        from control.cli.apiclient import ApiClient
        from schemas import api

        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit_s
        settings = NatsSettings(url=self.nats_url, prefix=self.prefix)
        online = 0
        async with ApiClient(settings) as client:
            while loop.time() < deadline and not stop.is_set():
                if self.failed():
                    raise CliError("; ".join(self.failed()) + f" (logs in {self.data_dir})")
                with contextlib.suppress(CliError, TimeoutError):  # still starting
                    reply = await client.call("node.list", api.EmptyRequest(), api.NodeListReply)
                    online = sum(n.state == "online" for n in reply.nodes)
                    if online >= self.nodes:
                        return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        if stop.is_set():
            return
        raise CliError(
            f"{online} of {self.nodes} nodes online after {limit_s:.0f} s (logs in {self.data_dir})"
        )

    async def add_control(self, name: str) -> None:
        """Start one more control-plane instance (a follower while another leads), as `name`."""
        [port] = free_ports(1)
        first = self.metrics_ports.get("control")
        config = self._control_toml(port)
        if first is not None:
            self.metrics_ports["control"] = first
        self.metrics_ports[name] = port
        await self._spawn(name, ["control", "run"], _named(name, config))

    def _control_toml(self, port: int) -> str:
        self.metrics_ports["control"] = port
        return (
            f'database_url = "{self.database_url}"\nmetrics_port = {port}\n'
            f'[nats]\nurl = "{self.nats_url}"\nprefix = "{self.prefix}"\n'
            f"[topology]\nack_wait = {self.ack_wait}\nreplicas = {self.replicas}\n"
            + "".join(
                f"[topology.shares.{p}]\n" + "".join(f"{t} = {w}\n" for t, w in ws.items())
                for p, ws in self.shares.items()
            )
            # Dev nodes serve cpu; the GPU pools are there for machines that have one.
            + '[alerts]\nrequired_pools = ["cpu"]\n'
        )

    def _daemon_toml(self, node: str, port: int) -> str:
        self.metrics_ports[node] = port
        roots = ", ".join(f'"{r.resolve()}"' for r in self.roots) or f'"{self.data_dir}"'
        url = self.node_nats_urls.get(node, self.nats_url)
        text = (
            f'node_id = "{node}"\nstate_dir = "{self.state_dir(node)}"\n'
            f"allowed_roots = [{roots}]\nmetrics_port = {port}\nthreads_per_job = 1\n"
            f"ack_wait = {self.ack_wait}\nheartbeat_interval = 2.0\n"
            # One box and a person watching: progress every second (a fleet's default is 5 s).
            + (
                ""
                if "progress_interval" in self.node_settings.options
                else "progress_interval = 1.0\n"
            )
            + self.node_settings.top_level()
            + f'[nats]\nurl = "{url}"\nprefix = "{self.prefix}"\n'
        ) + self.node_settings.toml()
        # Refuse a config the daemon would refuse, here rather than in a node's log.
        msgspec.toml.decode(text, type=DaemonConfig)
        return text

    def state_dir(self, node: str) -> Path:
        return self.data_dir / "nodes" / node

    async def _spawn(self, name: str, command: list[str], config: str) -> None:
        conf = self.data_dir / f"{name}.toml"
        conf.write_text(config)
        self.argv[name] = [sys.executable, "-m", "control", *command, "--config", str(conf)]
        await self._launch(name)

    async def _launch(self, name: str) -> None:
        log = (self.data_dir / f"{name}.log").open("ab")
        # `python -m` puts the working directory first on the path: that release's packages.
        self.procs[name] = await asyncio.create_subprocess_exec(
            *self.argv[name], stdout=log, stderr=log, start_new_session=True,
            cwd=self.node_release.get(name),
        )  # fmt: skip
        log.close()

    async def restart_node(self, name: str, *, crash: bool = False, grace: float = 60.0) -> None:
        """What an upgrade's `systemctl restart` does to one daemon: SIGTERM (it drains), wait,
        then SIGKILL what is left of its process group, as KillMode=mixed would; start it again
        with the same config and state. `crash=True` SIGKILLs the whole group at once instead."""
        proc = self.procs[name]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                if crash:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), grace)
        with contextlib.suppress(ProcessLookupError):  # ffmpeg children, or a hung daemon
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        await self._launch(name)

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM every service (daemons drain), SIGKILL what outlives `grace`, then servers."""
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        self.procs.clear()
        await self.stack.stop()

    def failed(self) -> list[str]:
        return [
            f"{n} exited with {p.returncode}"
            for n, p in self.procs.items()
            if p.returncode is not None
        ]


#: The clip `flotilla dev` leaves in its default media root (the quickstart's input).
SAMPLE_CLIP = "sample.mp4"


async def make_source(ffmpeg: str, path: Path, seconds: int = 3) -> None:
    """A 1080p test clip with sound (the demo's source, `flotilla dev`'s sample)."""
    argv = [
        ffmpeg,
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=1920x1080:rate=25",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        str(seconds),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "18",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-shortest",
        str(path),
    ]
    proc = await asyncio.create_subprocess_exec(*argv)
    if await proc.wait() != 0:
        raise CliError(f"ffmpeg could not make the sample clip {path}")


async def make_sample(path: Path) -> None:
    """A 3 s 1080p test clip at `path`, unless one is there from an earlier run."""
    if await asyncio.to_thread(path.exists):
        return
    from daemon.ffmpeg.tools import find_tools

    await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial.mp4")
    await make_source(find_tools().ffmpeg, partial)
    await asyncio.to_thread(partial.replace, path)


async def run_dev(
    data_dir: Path, nodes: int, roots: list[Path], context: str = "dev", sample: Path | None = None
) -> int:
    fleet = DevFleet(data_dir, nodes, roots, context_name=context)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"starting the fleet in {fleet.data_dir} ({nodes} nodes) …", flush=True)
    await fleet.start()
    try:
        # Said only once it answers, so the next command (README's quickstart) finds it up.
        await fleet.wait_ready(stop)
        if stop.is_set():  # Ctrl-C while starting
            return 0
        print(f"NATS      {fleet.nats_url}")
        print(f"Postgres  {fleet.database_url}")
        for name, port in fleet.metrics_ports.items():
            print(f"metrics   {name}: http://127.0.0.1:{port}/metrics")
        if fleet.context_path is not None:
            print(f"context   {fleet.context_path}   (other commands use it by default)")
        media = ", ".join(str(r) for r in fleet.roots)
        print(f"media     {media}   (the only place jobs may read and write files)")
        if sample is not None:
            print(f"sample    {sample}   (a 3 s clip to try jobs on)")
        print(f"logs      {fleet.data_dir}/*.log   (Ctrl-C stops the fleet)", flush=True)
        while not stop.is_set():
            if fleet.failed():
                print("flotilla dev: " + "; ".join(fleet.failed()), file=sys.stderr)
                return 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
        return 0
    finally:
        print("stopping the fleet…", flush=True)
        await fleet.stop()
