"""A tiny asyncio HTTP/1.1 server for GET-only endpoints (/metrics, /healthz, /readyz)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("flotilla.http")
#: path -> () -> (status, content type, body)
Route = Callable[[], Awaitable[tuple[int, str, bytes]]]
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
MAX_HEADER_LINES = 100


class HttpServer:
    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        self.host, self.port, self.routes = host, port, routes
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(10):
                request = (await reader.readline()).decode("latin-1").split()
                for _ in range(MAX_HEADER_LINES):  # drain headers; we need none of them
                    if (await reader.readline()) in (b"\r\n", b"\n", b""):
                        break
                status, ctype, body = await self._route(request)
                head = (
                    f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n"
                )
                writer.write(head.encode() + body)
                await writer.drain()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("http client dropped: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, request: list[str]) -> tuple[int, str, bytes]:
        if len(request) < 2:
            return 405, "text/plain", b"bad request\n"
        method, path = request[0], request[1].split("?", 1)[0]
        if method != "GET":
            return 405, "text/plain", b"GET only\n"
        route = self.routes.get(path)
        if route is None:
            return 404, "text/plain", b"not found\n"
        return await route()
