"""A minimal HTTP/1.1 POST client on asyncio streams (for webhooks; no extra dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit

MAX_RESPONSE_HEAD = 64 * 1024


async def post(url: str, body: bytes, headers: dict[str, str], limit_s: float = 10.0) -> int:
    """POST `body` and return the response status; raises OSError/TimeoutError/ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"callback url {url!r} is not http(s)")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    ctx = ssl.create_default_context() if tls else None
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(parts.hostname, port, ssl=ctx)
        try:
            head = [
                f"POST {path} HTTP/1.1",
                f"Host: {parts.netloc}",
                "Content-Type: application/json",
                f"Content-Length: {len(body)}",
                "Connection: close",
                *(f"{k}: {v}" for k, v in headers.items()),
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
            await writer.drain()
            status_line = await reader.readline()
            if len(status_line) > MAX_RESPONSE_HEAD:
                raise ValueError("response status line too long")
            fields = status_line.decode("latin-1").split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise ValueError(f"bad HTTP response {status_line[:100]!r}")
            return int(fields[1])
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
