"""One webhook attempt: vet the URL, then POST to the pinned address (HTTP/1.1, no dependency).

The connection goes to `Target.address` (checked by control.webhooks.target), never to the host
name again, so DNS cannot move it; the Host header and, for https, SNI and certificate
verification use the original host name. Only the status line of the answer is read: no
headers, no body, and no redirect is followed (a 3xx is a failed delivery like any non-2xx).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Collection

from control.webhooks import target as t
from control.webhooks.target import DeliveryFailed, Target

#: Longest status line we read; anything longer is not an HTTP answer.
MAX_STATUS_LINE = 1024


async def deliver(
    url: str, body: bytes, headers: dict[str, str], allow_hosts: Collection[str], limit_s: float
) -> tuple[int, Target]:
    """Vet `url`, POST to it and return the status, all within `limit_s`; else DeliveryFailed."""
    try:
        async with asyncio.timeout(limit_s):
            target = await t.vet_target(url, allow_hosts)
            return await post(target, body, headers), target
    except TimeoutError as exc:
        raise DeliveryFailed(t.TIMEOUT, f"{url[:200]!r}: nothing within {limit_s:g}s") from exc


async def post(target: Target, body: bytes, headers: dict[str, str]) -> int:
    """POST `body` and return the response status; DeliveryFailed when there is none."""
    try:
        return await _exchange(target, body, headers)
    except OSError as exc:  # refused, reset, unroutable, TLS (ssl.SSLError is an OSError)
        raise DeliveryFailed(t.UNREACHABLE, f"{target}: {exc!r}") from exc


async def _exchange(target: Target, body: bytes, headers: dict[str, str]) -> int:
    ctx = ssl.create_default_context() if target.tls else None
    reader, writer = await asyncio.open_connection(
        target.address, target.port, ssl=ctx,
        server_hostname=target.host if target.tls else None, limit=MAX_STATUS_LINE,
    )  # fmt: skip
    try:
        head = [
            f"POST {target.path} HTTP/1.1",
            f"Host: {target.host_header}",
            "User-Agent: flotilla-webhooks",
            "Content-Type: application/json",
            f"Content-Length: {len(body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        await writer.drain()
        try:
            line = await reader.readuntil(b"\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise DeliveryFailed(t.BAD_RESPONSE, f"{target}: no HTTP status line") from exc
        fields = line.split(None, 2)
        if len(fields) < 2 or not fields[0].startswith(b"HTTP/1.") or not _status(fields[1]):
            raise DeliveryFailed(t.BAD_RESPONSE, f"{target}: bad status line {line[:100]!r}")
        return int(fields[1])
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _status(field: bytes) -> bool:
    return len(field) == 3 and field.isdigit()
