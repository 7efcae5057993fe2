"""The real stack a simulation runs against: `flotilla dev`'s (nats-server, PostgreSQL, topology,
the control plane as a child process) with no daemons of its own, and the simulator processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

from control.devstack.fleet import DevFleet
from control.sim.scenario import Scenario

READY_LIMIT_S = 900.0


class SimFleet(DevFleet):
    """A dev fleet with no daemons, whose control plane takes the scenario's alert settings."""

    def __init__(self, data_dir: Path, scenario: Scenario) -> None:
        super().__init__(
            data_dir,
            nodes=0,
            ack_wait=scenario.ack_wait,
            context_name=None,
            nats_servers=scenario.nats_servers,
        )
        self.scenario = scenario

    def _control_toml(self, port: int) -> str:
        s = self.scenario
        pools = json.dumps(sorted(s.slots))
        self.metrics_ports["control"] = port
        return (
            f'database_url = "{self.database_url}"\nmetrics_port = {port}\n'
            f"alert_interval = {s.alert_interval}\n"
            f'[nats]\nurl = "{self.nats_url}"\nprefix = "{self.prefix}"\n'
            f"[topology]\nack_wait = {self.ack_wait}\nreplicas = {self.replicas}\n"
            f"[alerts]\nrequired_pools = {pools}\nnode_offline_after = {s.node_offline_after}\n"
        )


@dataclass
class NodeProcess:
    """One simulator process and the nodes it runs."""

    name: str
    nodes: list[str]
    config: Path
    log: Path
    proc: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    async def start(self) -> None:
        log = await asyncio.to_thread(self.log.open, "ab")
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "control.sim.nodes", str(self.config),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        finally:
            await asyncio.to_thread(log.close)
        self.starts += 1

    async def ready(self, limit_s: float = READY_LIMIT_S) -> None:
        """Until the process says every node started; raise if it exits first."""
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), limit_s)
        if not line.startswith(b"ready"):
            await self.proc.wait()
            tail = await asyncio.to_thread(self.log.read_text, errors="replace")
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {tail[-3000:]}")

    async def kill(self) -> None:
        """SIGKILL: every node in it dies at once, as a crashed daemon does."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, grace: float = 90.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), grace)
        except TimeoutError:
            await self.kill()


@dataclass
class Nodes:
    """Every simulator process of a run."""

    procs: list[NodeProcess] = field(default_factory=list)

    async def start_all(self) -> None:
        for p in self.procs:
            await p.start()
        await asyncio.gather(*(p.ready() for p in self.procs))

    async def stop_all(self) -> None:
        await asyncio.gather(*(p.stop() for p in self.procs), return_exceptions=True)

    def by_name(self, name: str) -> NodeProcess:
        return next(p for p in self.procs if p.name == name)
