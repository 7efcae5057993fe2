"""A NATS cluster of real nats-servers on loopback, for streams with R3 and leader-kill faults.

Each server is a `NatsServer` in its own directory with a `cluster {}` block routing to the
others. Ports are chosen once and kept, so a killed server restarts at the same address and
rejoins with its store.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from control.devstack.nats import HOST, NatsServer
from control.devstack.proc import EmbeddedError, free_ports

CLUSTER_NAME = "flotilla-dev"


class NatsCluster:
    """`size` servers named `flotilla-n1`… under `data_dir/n1`…; `url` lists them all."""

    def __init__(self, data_dir: Path, size: int = 3) -> None:
        if size < 1:
            raise EmbeddedError("a NATS cluster needs at least one server")
        self.data_dir = data_dir
        ports = free_ports(3 * size, HOST)
        routes = [ports[3 * i + 2] for i in range(size)]
        self.servers: list[NatsServer] = []
        for i in range(size):
            block = (
                "cluster {\n"
                f"  name: {CLUSTER_NAME}\n"
                f"  listen: {HOST}:{routes[i]}\n"
                "  routes: ["
                + ", ".join(f"nats-route://{HOST}:{p}" for j, p in enumerate(routes) if j != i)
                + "]\n}\n"
            )
            server = NatsServer(
                data_dir / f"n{i + 1}", name=f"flotilla-n{i + 1}", extra_config=block
            )
            server.port, server.http_port = ports[3 * i], ports[3 * i + 1]
            self.servers.append(server)

    @property
    def url(self) -> str:
        return ",".join(s.url for s in self.servers)

    def server(self, name: str) -> NatsServer:
        for s in self.servers:
            if s.name == name:
                return s
        raise KeyError(name)

    async def start(self, within: float = 60.0) -> None:
        # Together: a clustered JetStream waits for its peers before it reports healthy.
        try:
            await asyncio.gather(*(s.start(within) for s in self.servers))
        except BaseException:
            await self.stop()
            raise

    async def stop(self, grace: float = 10.0) -> None:
        await asyncio.gather(*(s.stop(grace) for s in self.servers), return_exceptions=True)

    async def kill(self) -> None:
        await asyncio.gather(*(s.kill() for s in self.servers), return_exceptions=True)
