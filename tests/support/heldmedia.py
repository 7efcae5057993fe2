"""Jobs that run until the test lets them go: an http input whose body is held back.

A small HTTP server (asyncio, 127.0.0.1 only, port 0) serves one clip at `/held/<job_id>.mp4`.
It sends the status line and headers at once, then holds the body until the test releases that
job id. The daemon has accepted the job by then and counts it as running (its heartbeat lists it,
and it holds a slot), but the download, and so the job, cannot finish before the release. A
release is remembered: a later request for a released job (a redelivery) is answered in full at
once. A client that hangs up (a killed daemon) ends its held response.

The daemons need the loopback host on their http allow-list and a read timeout longer than any
hold: `node_settings()` gives both.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from control.devstack.fleet import NodeSettings
from daemon.config import MediaSettings
from tests.support.fleetjobs import transcode

HOST = "127.0.0.1"
#: How long a daemon waits for the next bytes of a download: longer than any test holds a job.
READ_TIMEOUT_S = 3600.0
#: Connect, send the request and read the headers (sent at once), even on a loaded machine.
CONNECT_TIMEOUT_S = 60.0
_PATH = re.compile(r"/held/([A-Za-z0-9_.-]+)\.mp4")


def node_settings(slots: int | None = None) -> NodeSettings:
    """Daemon settings that let dev nodes fetch held inputs (and, optionally, fix cpu slots)."""
    media = MediaSettings(
        http_hosts=[HOST],
        http_allow_private=True,
        http_connect_timeout=CONNECT_TIMEOUT_S,
        http_read_timeout=READ_TIMEOUT_S,
    )
    return NodeSettings(media=media, slots={} if slots is None else {"cpu": slots})


class HeldMedia:
    """The server's state: which jobs were asked for, which are held now, which are released."""

    def __init__(self, src: Path, body: bytes) -> None:
        self.src, self.body = src, body
        self.port = 0
        #: Requests per job id (a redelivered job asks again).
        self.requests: Counter[str] = Counter()
        #: Job ids whose response is held open right now.
        self.holding: Counter[str] = Counter()
        self._gates: dict[str, asyncio.Event] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._closing = False

    def url(self, job_id: str) -> str:
        return f"http://{HOST}:{self.port}/held/{job_id}.mp4"

    def transcode(self, job_id: str, out_dir: Path) -> dict[str, Any]:
        """A transcode job (as support.fleetjobs.transcode) whose input is held until released."""
        return {**transcode(job_id, self.src, out_dir), "input": self.url(job_id)}

    def release(self, job_ids: Iterable[str]) -> None:
        """Let these jobs' downloads finish, now and on any later request."""
        for job_id in job_ids:
            self._gate(job_id).set()

    def released(self, job_id: str) -> bool:
        return self._gate(job_id).is_set()

    @property
    def connections(self) -> int:
        """Connections being answered now (held or not)."""
        return len(self._handlers)

    def _gate(self, job_id: str) -> asyncio.Event:
        return self._gates.setdefault(job_id, asyncio.Event())

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if self._closing:  # accepted just before the server closed
                return
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60.0)
            method, target, _ = head.decode("latin-1").split(" ", 2)
            match = _PATH.fullmatch(target)
            if method != "GET" or match is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            job_id = match[1]
            self.requests[job_id] += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nConnection: close\r\n"
                + f"Content-Length: {len(self.body)}\r\n\r\n".encode()
            )
            await writer.drain()
            self.holding[job_id] += 1
            try:
                released = await self._hold(job_id, reader)
            finally:
                self.holding[job_id] -= 1
                if not self.holding[job_id]:
                    del self.holding[job_id]
            if released:
                writer.write(self.body)
                await writer.drain()
        except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):  # fmt: skip
            pass  # the client went away, stalled or sent nonsense: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            self._handlers.discard(task)

    async def _hold(self, job_id: str, reader: asyncio.StreamReader) -> bool:
        """Until the job is released (True) or the client hangs up (False)."""
        opened = asyncio.create_task(self._gate(job_id).wait())
        hangup = asyncio.create_task(reader.read())  # EOF (or an error): a GET sends no more
        try:
            done, _ = await asyncio.wait({opened, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (opened, hangup):
                t.cancel()
            await asyncio.gather(opened, hangup, return_exceptions=True)
        return hangup not in done

    async def close(self) -> None:
        """End every response still open (held or not) and wait for their handlers."""
        self._closing = True
        handlers = set(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)


@asynccontextmanager
async def held_media(src: Path) -> AsyncIterator[HeldMedia]:
    """The server, on 127.0.0.1 and a free port, for as long as the context lasts."""
    media = HeldMedia(src, await asyncio.to_thread(src.read_bytes))
    server = await asyncio.start_server(media.handle, HOST, 0)
    media.port = server.sockets[0].getsockname()[1]
    try:
        yield media
    finally:
        server.close()
        await media.close()
        await server.wait_closed()
