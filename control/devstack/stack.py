"""The embedded stack: real nats-server and PostgreSQL as child processes, for the CLI and tests.

Each server lives in its own module; this one gathers them and offers `EmbeddedStack`, which
starts both under one data directory and stops them in reverse order.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from control.devstack.nats import NatsServer, nats_server_binary
from control.devstack.natscluster import NatsCluster
from control.devstack.pgadmin import ExternalPostgres, create_database, drop_database, dsn_for
from control.devstack.postgres import PostgresServer, pg_bin
from control.devstack.proc import EmbeddedError, free_ports, pid_alive

__all__ = [
    "EmbeddedError",
    "EmbeddedStack",
    "ExternalPostgres",
    "NatsCluster",
    "NatsServer",
    "PostgresServer",
    "create_database",
    "drop_database",
    "dsn_for",
    "free_ports",
    "nats_server_binary",
    "pg_bin",
    "pid_alive",
]


class EmbeddedStack:
    """NATS in `<data_dir>/nats`, PostgreSQL in `<data_dir>/postgres`; an async context manager.

    `nats_servers` > 1 runs a NATS cluster of that many servers instead of one server."""

    def __init__(self, data_dir: Path, nats_servers: int = 1) -> None:
        self.nats: NatsServer | NatsCluster = (
            NatsServer(data_dir / "nats")
            if nats_servers == 1
            else NatsCluster(data_dir / "nats", nats_servers)
        )
        self.postgres = PostgresServer(data_dir / "postgres")

    async def start(self) -> None:
        try:
            await self.nats.start()
            await self.postgres.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        # Reverse order of start; NATS is stopped even when Postgres fails to.
        try:
            await self.postgres.stop()
        finally:
            await self.nats.stop()

    async def __aenter__(self) -> EmbeddedStack:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
