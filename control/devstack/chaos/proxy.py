"""A TCP proxy on loopback between one daemon and NATS that the runner can cut and restore.

While cut, every open connection is closed and new ones are closed on accept, so the daemon
sees the broker vanish exactly as a severed link looks to it, while the rest of the fleet keeps
its connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

HOST = "127.0.0.1"
BUFFER = 64 * 1024


class TcpProxy:
    """Listens on `HOST:port`; `upstream()` names the target at each new connection."""

    def __init__(self, upstream: Callable[[], tuple[str, int]]) -> None:
        self.upstream = upstream
        self.port = 0
        self.cut = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, HOST, self.port or 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._close_all()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None

    def sever(self) -> None:
        """Cut the link: drop every connection now and refuse new ones until `restore()`."""
        self.cut = True
        self._close_all()

    def restore(self) -> None:
        self.cut = False

    def _close_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        host, port = self.upstream()
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(BUFFER):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        writer.transport.abort()
