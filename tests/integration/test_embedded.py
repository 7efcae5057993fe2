"""The embedded stack and shared fixtures: real servers start, survive restarts, leave nothing."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import asyncpg
import nats
import psutil
import pytest
import uvloop
from nats.aio.client import Client as NATS

from control.db.migrate import load_migrations
from control.devstack.stack import (
    EmbeddedError,
    EmbeddedStack,
    NatsServer,
    PostgresServer,
    free_ports,
    pid_alive,
)
from daemon.ffmpeg.tools import (
    FfmpegNotFound,
    FfmpegTools,
    ffmpeg_version,
    find_tools,
    wheel_ffmpeg,
)
from tests.support.media import media_duration, run_ffmpeg


def _tree(pid: int | None) -> list[int]:
    assert pid is not None
    return [pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))]


async def test_stack_starts_real_servers_and_leaves_no_process(open_tmp_path: Path) -> None:
    stack = EmbeddedStack(open_tmp_path)
    async with stack:
        nats_pids, pg_pids = _tree(stack.nats.pid), _tree(stack.postgres.pid)
        assert len(pg_pids) > 1  # postmaster plus its checkpointer, walwriter ...
        nc = await nats.connect(stack.nats.url)
        info = await nc.jetstream().account_info()
        await nc.close()
        assert info.limits.max_streams == -1
        conn = await asyncpg.connect(stack.postgres.dsn())
        assert (await conn.fetchval("SELECT 1")) == 1
        await conn.close()
    assert [p for p in nats_pids + pg_pids if pid_alive(p)] == []
    await stack.stop()  # idempotent


async def _count(url: str, stream: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info(stream)).state.messages)
    finally:
        await nc.close()


async def test_nats_restart_keeps_port_and_stream(tmp_path: Path, prefix: str) -> None:
    server = NatsServer(tmp_path / "nats")
    await server.start()
    try:
        url, stream = server.url, f"{prefix.upper()}_JOBS"
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{prefix}.submit.>"])
        for i in range(3):
            await js.publish(f"{prefix}.submit.{i}", b"job")
        await nc.close()
        await server.stop()
        assert server.pid is None
        await server.start()
        assert server.url == url
        assert await _count(url, stream) == 3
        # sync_interval: always, so an acknowledged publish survives SIGKILL too.
        nc = await nats.connect(url)
        await nc.jetstream().publish(f"{prefix}.submit.3", b"job")
        await nc.close()
        await server.kill()
        await server.start()
        assert await _count(url, stream) == 4
    finally:
        await server.stop()


async def test_nats_start_failure_names_the_cause(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = NatsServer(tmp_path / "nats")
        server.port = taken.getsockname()[1]
        [server.http_port] = free_ports(1)
        with pytest.raises(EmbeddedError, match="address already in use"):
            await server.start(within=10)
    assert server.pid is None


async def test_postgres_restart_keeps_committed_rows(open_tmp_path: Path) -> None:
    server = PostgresServer(open_tmp_path / "pg")
    await server.start()
    try:
        dsn, port = server.dsn(), server.port
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)")
        await conn.close()
        await server.stop()
        await server.start()
        assert server.port == port
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT sum(n) FROM t") == 3
        await conn.execute("INSERT INTO t VALUES (3)")
        await conn.close()
        await server.kill()  # crash: WAL replay on the next start keeps the commit
        await server.start()
        conn = await asyncpg.connect(dsn)
        assert await conn.fetchval("SELECT sum(n) FROM t") == 6
        await conn.close()
    finally:
        await server.stop()


def test_configured_ffmpeg_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "ffmpeg"
    with pytest.raises(FfmpegNotFound, match="does not exist or is not executable"):
        find_tools(ffmpeg=str(missing))
    missing.write_text("not a program")
    with pytest.raises(FfmpegNotFound, match=re.escape(str(missing))):
        find_tools(ffmpeg=str(missing))
    with pytest.raises(FfmpegNotFound, match="ffprobe"):
        find_tools(ffprobe=str(tmp_path / "ffprobe"))


async def test_ffmpeg_falls_back_to_the_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: nothing found there
    monkeypatch.delenv("IMAGEIO_FFMPEG_EXE", raising=False)
    tools = find_tools()
    assert tools == FfmpegTools(ffmpeg=wheel_ffmpeg(), ffprobe=None)
    assert re.match(r"^n?\d+\.\d+", await ffmpeg_version(tools.ffmpeg))


async def test_clips_are_real_media(
    ffmpeg_tools: FfmpegTools, clip: Path, clip_small: Path
) -> None:
    assert await media_duration(ffmpeg_tools.ffmpeg, clip) == pytest.approx(2.0, abs=0.1)
    assert await media_duration(ffmpeg_tools.ffmpeg, clip_small) == pytest.approx(1.0, abs=0.1)
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-v", "error", "-i", str(clip), "-f", "null", "-"
    )
    assert (code, err) == (0, b"")


async def test_fixtures_give_each_test_its_own_space(
    prefix: str, nc: NATS, database_url: str
) -> None:
    assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
    assert re.fullmatch(r"t[0-9a-f]{8}", prefix)
    assert nc.is_connected
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT current_database()") == database_url.rsplit("/", 1)[1]
        # A clone of the template, which the control plane's migrations set up once.
        latest = max(m.version for m in await asyncio.to_thread(load_migrations))
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == latest
    finally:
        await conn.close()


async def test_postgres_start_failure_names_the_cause(open_tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = PostgresServer(open_tmp_path / "pg")
        server.port = taken.getsockname()[1]
        with pytest.raises(EmbeddedError, match="Address already in use"):
            await server.start(within=30)
    assert server.pid is None
