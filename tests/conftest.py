"""Shared fixtures: real nats-server, PostgreSQL and ffmpeg, started once per session.

Every test gets its own subject prefix (`prefix`) and its own database (`database_url`, a clone
of one template). Set FLOTILLA_TEST_NATS_URL or FLOTILLA_TEST_DATABASE_URL to use servers that
are already running instead of starting embedded ones. Async tests run on uvloop, as the
services do.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest
import pytest_asyncio
import uvloop
from nats.aio.client import Client as NATS

from control.db.migrate import migrate
from control.devstack.stack import ExternalPostgres, NatsServer, PostgresServer
from daemon.ffmpeg.tools import FfmpegTools, find_tools
from tests.support.databases import fresh_database
from tests.support.media import make_clip


async def _migrate(dsn: str) -> None:
    await migrate(dsn)  # connects and closes: cloning needs no connection open


#: Run once against the template database's DSN before any test database is cloned from it, so
#: each test starts from the migrated schema instead of migrating its own database.
TEMPLATE_SETUP: list[Callable[[str], Awaitable[None]]] = [_migrate]


@dataclass(frozen=True, slots=True)
class ExternalNats:
    """A NATS server we did not start (FLOTILLA_TEST_NATS_URL); never stopped or restarted."""

    url: str


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"uvloop": uvloop.new_event_loop}


@pytest_asyncio.fixture(scope="session")
async def nats_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[NatsServer | ExternalNats]:
    url = os.environ.get("FLOTILLA_TEST_NATS_URL")
    if url:
        yield ExternalNats(url)
        return
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def nats_url(nats_server: NatsServer | ExternalNats) -> str:
    # Restart the shared server if a test stopped it and failed before starting it again.
    if isinstance(nats_server, NatsServer):
        await nats_server.start()
    return nats_server.url


@pytest.fixture
def prefix() -> str:
    """A subject token unique to the test: lowercase, so `prefix.upper()` suits stream names."""
    return "t" + secrets.token_hex(4)


@pytest_asyncio.fixture(autouse=True)
async def _drop_prefix_streams(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """After a test that used `prefix` on the shared server, delete its streams and buckets.

    Each topology reserves its jobs stream's max_bytes (1 GiB) against the server's storage
    limit; left behind, a few dozen tests exhaust it ("insufficient storage resources").
    """
    yield
    args = request.node.funcargs
    prefix, url = args.get("prefix"), args.get("nats_url")
    if not isinstance(prefix, str) or not isinstance(url, str):
        return
    try:
        client = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    except Exception:  # the test left the server stopped: the next nats_url restarts it
        return
    try:
        js = client.jetstream(timeout=5)
        names = await js.streams_info()
        for info in names:
            name = info.config.name or ""
            if prefix.upper() in name.upper():
                await js.delete_stream(name)
    except Exception:  # cleanup is best effort; the storage limit is the only cost
        pass
    finally:
        await client.close()


@pytest_asyncio.fixture
async def nc(nats_url: str) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def open_tmp_path() -> AsyncIterator[Path]:
    """Like tmp_path, but under /tmp and open to other users: a PostgresServer's data directory
    must be reachable by its system user when tests run as root (pytest's base dir is 0700)."""
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="flotilla-test-"))
    await asyncio.to_thread(path.chmod, 0o755)
    yield path
    await asyncio.to_thread(shutil.rmtree, path, True)


@pytest_asyncio.fixture(scope="session")
async def pg_server() -> AsyncIterator[PostgresServer | ExternalPostgres]:
    url = os.environ.get("FLOTILLA_TEST_DATABASE_URL")
    if url:
        yield ExternalPostgres(url)
        return
    # Under /tmp rather than pytest's 0700 base directory: as root, PostgreSQL runs as a
    # system user that must be able to reach its data directory.
    data = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="flotilla-test-pg-"))
    server = PostgresServer(data)
    try:
        await server.start()
        yield server
    finally:
        await server.stop()
        await asyncio.to_thread(shutil.rmtree, data, True)


@pytest_asyncio.fixture(scope="session")
async def pg_template(pg_server: PostgresServer | ExternalPostgres) -> AsyncIterator[str]:
    """The name of the template database, set up once by TEMPLATE_SETUP."""
    name = "tmpl_" + secrets.token_hex(4)
    await pg_server.create_database(name)
    try:
        for hook in TEMPLATE_SETUP:
            await hook(pg_server.dsn(name))
        yield name
    finally:
        await pg_server.drop_database(name)


@pytest_asyncio.fixture
async def database_url(
    pg_server: PostgresServer | ExternalPostgres, pg_template: str
) -> AsyncIterator[str]:
    """A fresh database for this test, cloned from the template and dropped afterwards."""
    async with fresh_database(pg_server, pg_template) as url:
        yield url


@pytest.fixture(scope="session")
def ffmpeg_tools() -> FfmpegTools:
    return find_tools()


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's test media live; tests must treat them as read-only."""
    return tmp_path_factory.mktemp("media")


@pytest_asyncio.fixture(scope="session")
async def clip(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """2 s, 320x240, 25 fps, H.264 + AAC (1 kHz sine) in MP4."""
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "clip.mp4", seconds=2)


@pytest_asyncio.fixture(scope="session")
async def clip_small(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """1 s, 160x120, 25 fps, H.264 + AAC in MP4."""
    out = media_dir / "clip_small.mp4"
    return await make_clip(ffmpeg_tools.ffmpeg, out, seconds=1, size="160x120")
