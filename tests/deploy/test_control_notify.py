"""sd_notify from the control plane: READY=1 once it serves, WATCHDOG=1 while healthy, STOPPING=1.

The real `python -m control control run` under a notify socket we bind, as systemd would run it
(Type=notify, NotifyAccess=main, WatchdogSec), against real NATS and Postgres.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS

from common.natsconn import NatsSettings
from common.sdnotify import Notifier, watchdog_task
from control.config import AlertThresholds, ControlConfig
from control.service import ControlPlane
from tests.support.controlplane import control_config
from tests.support.notify import recv_with_pid

REPO = Path(__file__).resolve().parents[2]
RECV_TIMEOUT = 30.0


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(RECV_TIMEOUT)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    yield sock, str(path)
    sock.close()


async def _until(sock: socket.socket, pid: int, wanted: str, seen: list[str]) -> None:
    for _ in range(100):
        lines, sender = await asyncio.to_thread(recv_with_pid, sock)
        assert sender == pid, "a notification came from a process other than the main one"
        seen.extend(lines)
        if wanted in lines:
            return
    pytest.fail(f"no {wanted} among {seen}")


@pytest.mark.timeout(180)
async def test_control_run_notifies_systemd(
    tmp_path: Path,
    nc: NATS,
    nats_url: str,
    prefix: str,
    database_url: str,
    listener: tuple[socket.socket, str],
) -> None:
    config = tmp_path / "control.toml"
    config.write_text(
        f'database_url = "{database_url}"\nmetrics_port = 0\n'
        f'[nats]\nurl = "{nats_url}"\nprefix = "{prefix}"\n[topology]\npools = ["cpu"]\n'
    )
    sock, path = listener
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    argv = [sys.executable, "-m", "control", "control", "run", "--config", str(config)]
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=REPO, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        seen: list[str] = []
        await _until(sock, proc.pid, "READY=1", seen)
        # READY means serving: migrations applied and the API answering, with no retry needed.
        db = await asyncpg.connect(database_url)
        try:
            assert await db.fetchval("SELECT count(*) FROM alerts") == 0
        finally:
            await db.close()
        reply = await nc.request(f"{prefix}.api.fleet.summary", b"{}", timeout=5)
        assert b"error" not in reply.data
        await _until(sock, proc.pid, "WATCHDOG=1", seen)
        assert seen.index("READY=1") < seen.index("WATCHDOG=1")
        # systemctl reload (ExecReload sends SIGHUP): reloaded, not killed.
        config.write_text(config.read_text().replace("[nats]", "alert_interval = 3.0\n[nats]"))
        proc.send_signal(signal.SIGHUP)
        await _until(sock, proc.pid, "RELOADING=1", seen)
        after: list[str] = []
        await _until(sock, proc.pid, "READY=1", after)
        assert proc.returncode is None
        proc.send_signal(signal.SIGTERM)
        await _until(sock, proc.pid, "STOPPING=1", seen)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_no_watchdog_once_ingest_is_gone(
    nats_url: str, prefix: str, database_url: str, listener: tuple[socket.socket, str]
) -> None:
    """The watchdog feeds on `ControlPlane.healthy`: without ingest, systemd should restart us."""
    plane = ControlPlane(control_config(nats_url, prefix, database_url))
    await plane.start()
    sock, path = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    checks = 0

    def healthy() -> bool:
        nonlocal checks
        checks += 1
        return plane.healthy()

    pinger = asyncio.create_task(watchdog_task(notifier, healthy))
    try:
        assert (await asyncio.to_thread(sock.recv, 4096)) == b"WATCHDOG=1"
        plane.tasks["ingest"].cancel()
        for _ in range(100):
            if plane.tasks["ingest"].done():
                break
            await asyncio.sleep(0.05)
        assert not plane.healthy()
        sock.setblocking(False)
        while True:  # drop pings sent before ingest ended
            try:
                sock.recv(4096)
            except BlockingIOError:
                break
        start = checks
        for _ in range(500):
            if checks >= start + 3:
                break
            await asyncio.sleep(0.01)
        assert checks >= start + 3
        with pytest.raises(BlockingIOError):
            sock.recv(4096)
    finally:
        pinger.cancel()
        notifier.close()
        await plane.stop()


async def test_reload_applies_thresholds_and_names_what_needs_a_restart(
    nats_url: str, prefix: str, database_url: str
) -> None:
    old = ControlConfig(
        nats=NatsSettings(url=nats_url, prefix=prefix), database_url=database_url, metrics_port=0
    )
    plane = ControlPlane(old)
    await plane.start()
    try:
        new = msgspec.structs.replace(
            old,
            alert_interval=2.5,
            metrics_port=1,
            alerts=AlertThresholds(queue_depth=7, node_offline_after=99.0),
        )
        assert plane.reload(new) == ["metrics_port", "alerts.node_offline_after"]
        assert plane.singletons is not None
        assert plane.singletons.engine.t.queue_depth == 7
        assert plane.cfg is new
    finally:
        await plane.stop()
