"""http(s):// inputs against a real local HTTP server (asyncio, 127.0.0.1, port 0).

Covers: a download that probes like the original (byte for byte), chunked bodies, retries on 5xx
and stalls (bounded), redirects (followed to allowed hosts only), size caps (declared and
actual), 4xx as permanent, the host allow-list and the private-address refusal.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from daemon.config import MediaSettings
from daemon.errors import InputError, JobError, PathRefused
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess
from daemon.media.httpfetch import fetch_http
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from schemas.jobs import JobSpec
from schemas.operations import Probe
from tests.support.httpserver import Server


@pytest_asyncio.fixture
async def server(clip: Path) -> AsyncIterator[Server]:
    srv = Server(body=await asyncio.to_thread(clip.read_bytes))
    tcp = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = tcp.sockets[0].getsockname()[1]
    try:
        yield srv
    finally:
        tcp.close()
        await tcp.wait_closed()


def _media(**over: object) -> MediaSettings:
    base: dict[str, object] = dict(
        http_hosts=["127.0.0.1"], http_allow_private=True, http_retries=2, http_backoff=0.01,
        http_read_timeout=0.5, http_connect_timeout=5.0, max_input_bytes=200_000,
    )  # fmt: skip
    base.update(over)
    return MediaSettings(**base)  # type: ignore[arg-type]


async def _no_progress(update: ProgressUpdate) -> None:
    return None


async def test_http_input_runs_an_operation(
    ffmpeg_tools: FfmpegTools, server: Server, clip: Path, tmp_path: Path
) -> None:
    for path in ("/clip.mp4", "/chunked.mp4", "/flaky.mp4", "/redirect-ok"):
        scratch = tmp_path / path.strip("/")
        scratch.mkdir()
        spec = JobSpec(job_id="h1", input=server.url(path), operation=Probe())
        ctx = JobContext(
            handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=ffmpeg_tools,
            verified_encoders=frozenset(), hwaccels=frozenset(), threads=1, allowed_roots=[],
            progress=_no_progress, media=MediaAccess(limits=_media()),
        )  # fmt: skip
        result = await run_operation(ctx)
        assert result.probe is not None and result.probe.duration_s
        downloaded = next(scratch.glob("input*"))
        assert await asyncio.to_thread(downloaded.read_bytes) == server.body
        assert result.input_size_bytes == len(server.body)
    assert server.hits["/flaky.mp4"] == 3


@pytest.mark.parametrize(
    ("path", "error", "needle"),
    [
        ("/redirect-evil", PathRefused, "allow-list"),
        ("/redirect-ip", PathRefused, "allow-list"),
        ("/redirect-file", PathRefused, "scheme"),
        ("/huge", InputError, "over the cap"),
        ("/liar", InputError, "over the cap"),
        ("/missing", InputError, "HTTP 404"),
        ("/gzip", InputError, "encoded"),
    ],
)
async def test_refused_downloads_are_permanent(
    server: Server, tmp_path: Path, path: str, error: type[JobError], needle: str
) -> None:
    dest = tmp_path / "in.mp4"
    with pytest.raises(error) as info:
        await fetch_http(server.url(path), dest, _media())
    assert info.value.kind == "permanent" and needle in info.value.reason
    assert not dest.exists()
    assert server.hits.get(path) == 1  # permanent: not retried


@pytest.mark.parametrize("path", ["/always500", "/stall", "/short"])
async def test_failing_server_is_retried_then_transient(
    server: Server, tmp_path: Path, path: str
) -> None:
    dest = tmp_path / "in.mp4"
    with pytest.raises(JobError) as info:
        async with asyncio.timeout(30):
            await fetch_http(server.url(path), dest, _media())
    assert info.value.kind == "transient" and "after 3 tries" in info.value.reason
    assert server.hits[path] == 3 and not dest.exists()


async def test_host_policy(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "in.mp4"
    cases = [
        (_media(http_hosts=[]), server.url("/clip.mp4"), "disabled"),
        (_media(http_allow_private=False), server.url("/clip.mp4"), "non-public"),
        (_media(), server.url("/clip.mp4").replace("127.0.0.1", "localhost"), "allow-list"),
        (_media(), server.url("/clip.mp4").replace("http://", "http://u:p@"), "credentials"),
        (_media(), f"ftp://127.0.0.1:{server.port}/clip.mp4", "scheme"),
        (_media(), server.url("/cl ip.mp4\r\nX-Evil: 1"), "whitespace"),
        (_media(), server.url("/clïp.mp4"), "ASCII"),
    ]
    for media, url, needle in cases:
        with pytest.raises(PathRefused, match=needle):
            await fetch_http(url, dest, media)
    assert server.hits == {}  # nothing was even requested


async def test_redirect_loop_is_bounded(server: Server, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="more than 2 redirects"):
        await fetch_http(server.url("/loop"), tmp_path / "in.mp4", _media(http_max_redirects=2))
    assert server.hits["/loop"] == 3
