"""The held-input server the fleet tests use (support.heldmedia), against the daemon's own fetch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from daemon.media.httpfetch import fetch_http
from tests.support.heldmedia import HeldMedia, held_media, node_settings

LIMIT_S = 30.0  # bounds a failure only


async def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + LIMIT_S
    while not check():
        assert time.monotonic() < deadline, f"not {what} in {LIMIT_S}s"
        await asyncio.sleep(0.05)


async def get(
    media: HeldMedia, path: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Send a GET and read the response head (a held body is still to come)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", media.port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), LIMIT_S)
    return reader, writer, head


async def test_a_held_download_finishes_only_when_released(clip: Path, tmp_path: Path) -> None:
    settings = node_settings().media
    assert settings is not None
    async with held_media(clip) as media:
        url = media.url("j1")
        fetch = asyncio.create_task(fetch_http(url, tmp_path / "a.mp4", settings))
        await until(lambda: media.holding["j1"] == 1, "held")
        assert not fetch.done() and not media.released("j1")
        media.release(["j1"])
        assert await asyncio.wait_for(fetch, LIMIT_S) == len(media.body)
        assert await asyncio.to_thread((tmp_path / "a.mp4").read_bytes) == media.body
        # A release lasts: the job's next request (a redelivery) is answered at once.
        again = await asyncio.wait_for(fetch_http(url, tmp_path / "b.mp4", settings), LIMIT_S)
        assert again == len(media.body) and media.requests["j1"] == 2
        await until(lambda: media.connections == 0, "every response ended")


async def test_hangup_and_close_end_held_responses(clip: Path) -> None:
    async with held_media(clip) as media:
        _, _, head = await get(media, "/elsewhere.mp4")
        assert head.startswith(b"HTTP/1.1 404 ")
        _, gone, head = await get(media, "/held/gone.mp4")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        kept, kept_writer, _ = await get(media, "/held/kept.mp4")
        await until(lambda: media.holding == {"gone": 1, "kept": 1}, "both held")
        gone.close()  # the client hangs up, as a killed daemon's socket does
        await until(lambda: "gone" not in media.holding, "the hang-up noticed")
        assert media.connections == 1 and not media.released("gone")
    # Leaving the context ended the held response (no handler left behind): the body never came.
    assert media.connections == 0 and not media.holding
    assert await asyncio.wait_for(kept.read(), LIMIT_S) == b""
    kept_writer.close()
