"""A minimal HTTP/1.1 GET on asyncio streams: one request to one pinned address, body streamed.

No dependency and no policy: daemon.media.httpfetch decides which hosts, addresses, redirects and
retries are allowed; this module only speaks the protocol, with bounds on everything the server
sends (head size, header count, body bytes, time between reads). Bodies come as Content-Length or
chunked; a compressed body is refused (we ask for identity).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_HEAD_LINE = 16 * 1024
MAX_HEADERS = 100
READ_CHUNK = 256 * 1024


class HttpProtocolError(Exception):
    """The server broke HTTP/1.1 or a bound (retryable: a different try may go well)."""


class BodyRefused(Exception):
    """The body is one we will not take, on any try (encoded, or over the cap)."""


class BodyTooLarge(BodyRefused):
    """The body is (or says it is) over the byte cap."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def open_get(
    address: str, port: int, *, host: str, target: str, tls: bool, connect_timeout: float
) -> Response:
    """Connect to `address` (an IP the caller vetted), send the GET, read the status and head."""
    ctx = ssl.create_default_context() if tls else None
    async with asyncio.timeout(connect_timeout):
        reader, writer = await asyncio.open_connection(
            address, port, ssl=ctx, server_hostname=host if tls else None, limit=MAX_HEAD_LINE
        )
    name = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    try:
        head = [
            f"GET {target} HTTP/1.1",
            f"Host: {name if port in (80, 443) else f'{name}:{port}'}",
            "User-Agent: flotilla-daemon",
            "Accept-Encoding: identity",
            "Connection: close",
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii"))
        async with asyncio.timeout(connect_timeout):
            await writer.drain()
            status, headers = await read_head(reader)
    except BaseException:
        writer.close()
        raise
    return Response(status, headers, reader, writer)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    line = await _line(reader)
    fields = line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith("HTTP/1.") or not fields[1].isdigit():
        raise HttpProtocolError(f"bad HTTP status line {line[:100]!r}")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await _line(reader)
        if not line:
            return int(fields[1]), headers
        name, sep, value = line.partition(":")
        if not sep:
            raise HttpProtocolError(f"bad header line {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    raise HttpProtocolError(f"more than {MAX_HEADERS} response headers")


async def _line(reader: asyncio.StreamReader) -> str:
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.LimitOverrunError as exc:
        raise HttpProtocolError("response head line too long") from exc
    except asyncio.IncompleteReadError as exc:
        raise HttpProtocolError("connection closed inside the response head") from exc
    return raw.decode("latin-1").rstrip("\r\n")


async def stream_body(
    resp: Response,
    sink: Callable[[bytes], Awaitable[None]],
    *,
    max_bytes: int,
    read_timeout: float,
) -> int:
    """Feed the body to `sink`; returns its size. BodyTooLarge past `max_bytes`."""
    encoding = resp.headers.get("content-encoding", "identity").lower()
    if encoding not in ("", "identity"):
        raise BodyRefused(f"server sent a {encoding[:40]!r}-encoded body (asked for identity)")
    if "chunked" in resp.headers.get("transfer-encoding", "").lower():
        return await _chunked(resp.reader, sink, max_bytes, read_timeout)
    length = resp.headers.get("content-length")
    if length is None:
        return await _until_eof(resp.reader, sink, max_bytes, read_timeout)
    if not length.isdigit():
        raise HttpProtocolError(f"bad Content-Length {length[:40]!r}")
    if int(length) > max_bytes:
        raise BodyTooLarge(f"Content-Length {length} is over the cap of {max_bytes} bytes")
    return await _exact(resp.reader, sink, int(length), read_timeout)


async def _exact(
    reader: asyncio.StreamReader, sink: Callable[[bytes], Awaitable[None]], n: int, wait: float
) -> int:
    left = n
    while left:
        async with asyncio.timeout(wait):
            data = await reader.read(min(left, READ_CHUNK))
        if not data:
            raise HttpProtocolError(f"body ended after {n - left} of {n} bytes")
        left -= len(data)
        await sink(data)
    return n


async def _until_eof(
    reader: asyncio.StreamReader, sink: Callable[[bytes], Awaitable[None]], cap: int, wait: float
) -> int:
    total = 0
    while True:
        async with asyncio.timeout(wait):
            data = await reader.read(READ_CHUNK)
        if not data:
            return total
        total += len(data)
        if total > cap:
            raise BodyTooLarge(f"body is over the cap of {cap} bytes")
        await sink(data)


async def _chunked(
    reader: asyncio.StreamReader, sink: Callable[[bytes], Awaitable[None]], cap: int, wait: float
) -> int:
    total = 0
    while True:
        async with asyncio.timeout(wait):
            size_line = await _line(reader)
        size_text = size_line.split(";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}") from exc
        if size < 0 or not size_text.isalnum():
            raise HttpProtocolError(f"bad chunk size {size_text[:20]!r}")
        if size == 0:
            return total
        total += size
        if total > cap:
            raise BodyTooLarge(f"body is over the cap of {cap} bytes")
        await _exact(reader, sink, size, wait)
        async with asyncio.timeout(wait):
            await _line(reader)  # the CRLF after each chunk
