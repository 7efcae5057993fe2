"""sd_notify: the messages systemd would read, received on a real datagram socket we bind."""

from __future__ import annotations

import asyncio
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from common.sdnotify import Notifier, watchdog_task
from control.topology import TopologySettings, ensure_topology
from schemas.subjects import Subjects
from tests.support.notify import recv_with_pid

RECV_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = tmp_path / "notify.sock"
    sock.bind(str(path))
    sock.settimeout(RECV_TIMEOUT)
    yield sock, str(path)
    sock.close()


def _recv(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_no_socket_is_a_noop() -> None:
    notifier = Notifier(env={})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval() is None


def test_messages_on_a_path_socket(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    notifier = Notifier(env={"NOTIFY_SOCKET": path})
    assert notifier.ready("pulling cpu") is True
    assert _recv(sock) == ["READY=1", "STATUS=pulling cpu"]
    notifier.status("draining: 2 jobs left")
    assert _recv(sock) == ["STATUS=draining: 2 jobs left"]
    notifier.watchdog()
    assert _recv(sock) == ["WATCHDOG=1"]
    notifier.extend_timeout(1.5)
    assert _recv(sock) == ["EXTEND_TIMEOUT_USEC=1500000"]
    notifier.stopping()
    assert _recv(sock) == ["STOPPING=1"]
    notifier.close()
    assert notifier.ready() is False


def test_reloading_carries_the_monotonic_clock(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    before = time.monotonic_ns() // 1000
    Notifier(env={"NOTIFY_SOCKET": path}).reloading()
    first, second = _recv(sock)
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= time.monotonic_ns() // 1000


def test_abstract_namespace_address() -> None:
    name = f"flotilla-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(RECV_TIMEOUT)
        assert Notifier(env={"NOTIFY_SOCKET": "@" + name}).ready() is True
        assert _recv(sock) == ["READY=1"]


def test_vanished_socket_is_swallowed(tmp_path: Path) -> None:
    notifier = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert notifier.watchdog() is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env={"NOTIFY_SOCKET": "/nonexistent", **env}).watchdog_interval() == expected


async def test_watchdog_task_pings_from_the_loop(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    notifier = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    task = asyncio.create_task(watchdog_task(notifier))
    try:
        for _ in range(3):
            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), RECV_TIMEOUT)
            assert data == b"WATCHDOG=1"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_watchdog_task_skips_pings_when_unhealthy(
    listener: tuple[socket.socket, str],
) -> None:
    sock, path = listener
    calls = 0

    def healthy() -> bool:
        nonlocal calls
        calls += 1
        return False

    notifier = Notifier(env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "20000"})
    task = asyncio.create_task(watchdog_task(notifier, healthy))
    for _ in range(500):
        if calls >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 3
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)


async def test_watchdog_task_returns_without_watchdog() -> None:
    await asyncio.wait_for(watchdog_task(Notifier(env={})), RECV_TIMEOUT)


CHILD = """
import asyncio, os, signal, sys
from common.sdnotify import Notifier, watchdog_task

async def main() -> None:
    notifier = Notifier.from_environ()
    # What a child process (ffmpeg) would inherit: nothing of the notify protocol.
    leaked = [k for k in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID") if k in os.environ]
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    pinger = asyncio.create_task(watchdog_task(notifier))
    notifier.ready(f"leaked={','.join(leaked) or 'none'}")
    await asyncio.wait_for(stop.wait(), 60)
    notifier.stopping()
    pinger.cancel()

asyncio.run(main())
"""


async def test_a_process_notifies_like_systemd_expects(
    listener: tuple[socket.socket, str],
) -> None:
    """Across a process boundary, with the sender pid that systemd checks for NotifyAccess=main."""
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", CHILD, env=env, cwd=REPO)
    try:
        seen: list[str] = []
        for _ in range(50):
            lines, pid = await asyncio.to_thread(recv_with_pid, sock)
            assert pid == proc.pid
            seen.extend(lines)
            if "READY=1" in seen and "WATCHDOG=1" in seen:
                break
        assert "STATUS=leaked=none" in seen
        proc.send_signal(signal.SIGTERM)
        for _ in range(50):
            lines, _pid = await asyncio.to_thread(recv_with_pid, sock)
            if lines == ["STOPPING=1"]:
                break
        else:
            pytest.fail("no STOPPING=1 after SIGTERM")
        assert await asyncio.wait_for(proc.wait(), RECV_TIMEOUT) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


# --- the shipped unit's command line, run against a real broker ------------------------------


def _unit_service_lines(unit: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    log = tmp_path / "nats.log"
    with log.open("w") as out:
        server = [str(VENV_BIN / "nats-server"), "-js", "-sd", str(tmp_path / "js")]
        proc = subprocess.Popen(
            [*server, "-a", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=out,
        )
    try:
        for _ in range(200):
            if "Server is ready" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, log.read_text()
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(180)
async def test_the_unit_starts_the_daemon_with_the_notify_protocol(
    tmp_path: Path, broker: str, listener: tuple[socket.socket, str]
) -> None:
    """ExecStart of systemd/flotilla-daemon.service, as systemd would run it: READY=1 and
    WATCHDOG=1 from the main pid (NotifyAccess=main), then STOPPING=1 and exit 0 on SIGTERM."""
    nc = await nats.connect(broker)
    await ensure_topology(nc.jetstream(), Subjects(), TopologySettings(pools=["cpu"]))
    await nc.close()
    config = tmp_path / "daemon.toml"
    config.write_text(
        f'node_id = "unit-notify"\nstate_dir = "{tmp_path / "state"}"\npools = ["cpu"]\n'
        f'metrics_port = {_free_port()}\n[nats]\nurl = "{broker}"\n'
    )
    unit = _unit_service_lines(REPO / "systemd" / "flotilla-daemon.service")
    (exec_start,) = unit["ExecStart"]
    # The paths a test machine has in place of /opt/flotilla and /etc/flotilla; nothing else.
    argv = shlex.split(
        exec_start.replace("/opt/flotilla/current/bin/", f"{VENV_BIN}/").replace(
            "/etc/flotilla/daemon.toml", str(config)
        )
    )
    sock, path = listener
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    env = dict(os.environ)
    for assignment in unit.get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value
    # WatchdogSec=30 would mean a ping every 15 s; a shorter one shows the same protocol sooner.
    env.update({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL
    )
    try:
        seen: list[str] = []
        for _ in range(50):
            lines, pid = await asyncio.to_thread(recv_with_pid, sock)
            assert pid == proc.pid, "a notification came from a process other than the main one"
            seen.extend(lines)
            if "READY=1" in seen and "WATCHDOG=1" in seen:
                break
        assert "READY=1" in seen and "WATCHDOG=1" in seen, seen
        proc.send_signal(signal.SIGTERM)
        for _ in range(50):
            lines, _pid = await asyncio.to_thread(recv_with_pid, sock)
            if "STOPPING=1" in lines:
                break
        else:
            pytest.fail("no STOPPING=1 after SIGTERM")
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
