"""Fixtures of the integration tier beyond the shared ones in tests/conftest.py."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import nats
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from control.topology import ensure_topology
from daemon.app import Daemon
from daemon.ffmpeg.tools import FfmpegTools
from schemas.subjects import Subjects
from tests.support.daemons import TOPO, config
from tests.support.ingest import migrated_pool
from tests.support.media import make_clip


@pytest_asyncio.fixture
async def js(nc: NATS, prefix: str) -> JetStreamContext:
    ctx = nc.jetstream(timeout=5)
    await ensure_topology(ctx, Subjects(prefix), TOPO)
    return ctx


@pytest_asyncio.fixture
async def node_nc(nats_url: str) -> AsyncIterator[NATS]:
    """A node's own connection, as a daemon has: the producer's (`nc`) is another."""
    client = await nats.connect(nats_url, connect_timeout=5)
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this test's own migrated database."""
    async with migrated_pool(database_url) as pool:
        yield pool


@pytest_asyncio.fixture(scope="session")
async def long_clip(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """Long enough that a slow-preset transcode runs for seconds: time to kill or cancel it."""
    return await make_clip(ffmpeg_tools.ffmpeg, media_dir / "long.mp4", seconds=20, size="640x480")


@pytest_asyncio.fixture
async def start_daemon(
    nats_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[Daemon]]]:
    started: list[Daemon] = []

    async def start(node_id: str = "n1", **over: Any) -> Daemon:
        d = Daemon(config(nats_url, prefix, tmp_path / node_id, node_id, **over))
        await d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        await stop_or_tell(d)


#: Longer than any bounded step of a forced stop; a stop past it is a hang.
STOP_LIMIT = 120.0


async def stop_or_tell(d: Daemon) -> None:
    """Stop a daemon; if it hangs, fail this test with every task's stack (pytest-timeout
    would print only the threads', which show an idle loop, and end the whole run)."""
    stop = asyncio.ensure_future(d.stop(force=True))
    done, _ = await asyncio.wait({stop}, timeout=STOP_LIMIT)
    if stop in done:
        return stop.result()
    out = io.StringIO()
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}: {task.get_coro()!r}", file=out)
        task.print_stack(file=out)
    raise AssertionError(f"daemon {d.cfg.node_id} did not stop in {STOP_LIMIT:g} s; "
                         f"tasks:\n{out.getvalue()}")  # fmt: skip
