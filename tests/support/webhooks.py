"""A real webhook receiver on loopback (IPv4 and IPv6, one port) and a finished job to call it."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import ssl
from datetime import UTC, datetime

import asyncpg

from control.db.store import record_submission
from schemas.jobs import JobSpec
from schemas.operations import Canary


class Receiver:
    """Answers each POST with the next planned status; counts every connection it accepts.

    `hold` answers only the status line and then keeps the connection open, sending nothing
    more; `location` adds a Location header (for redirects).
    """

    def __init__(self, statuses: list[int], *, hold: bool = False, location: str = "") -> None:
        self.statuses, self.hold, self.location = statuses, hold, location
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0
        self.sni: list[str | None] = []
        self.servers: list[asyncio.Server] = []
        self.port = 0
        self._held: list[asyncio.StreamWriter] = []

    async def start(self, tls: ssl.SSLContext | None = None) -> None:
        """Listen on 127.0.0.1 and, where the host has IPv6, on ::1 with the same port."""
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)  # type: ignore[assignment,misc]
        for _ in range(20):
            v4 = await asyncio.start_server(self.handle, "127.0.0.1", 0, ssl=tls)
            self.port = v4.sockets[0].getsockname()[1]
            try:
                v6 = await asyncio.start_server(self.handle, "::1", self.port, ssl=tls)
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:  # no IPv6 here: IPv4 alone
                    self.servers = [v4]
                    return
                v4.close()
                await v4.wait_closed()
                continue
            self.servers = [v4, v6]
            return
        raise RuntimeError("no port free on both 127.0.0.1 and ::1")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readline()
            headers: dict[str, str] = {}
            for _ in range(100):
                line = (await reader.readline()).decode().strip()
                if not line:
                    break
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers["content-length"]))
        except (OSError, asyncio.IncompleteReadError, KeyError, ValueError):
            writer.close()
            return
        self.got.append((headers, body))
        status = self.statuses[min(len(self.got), len(self.statuses)) - 1]
        if self.hold:
            writer.write(f"HTTP/1.1 {status} X\r\n".encode())
            self._held.append(writer)
            return
        extra = f"Location: {self.location}\r\n" if self.location else ""
        writer.write(f"HTTP/1.1 {status} X\r\n{extra}Content-Length: 0\r\n\r\n".encode())
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    async def stop(self) -> None:
        for writer in self._held:
            writer.close()
        for server in self.servers:
            server.close()
            await server.wait_closed()


async def finished_job(db: asyncpg.Pool, job_id: str, url: str, tenant: str) -> None:
    """A job that just completed with `url` as its callback (not validated: old rows may be odd)."""
    spec = JobSpec(
        job_id=job_id, tenant=tenant, input="file:///x", operation=Canary(), callback_url=url
    )
    async with db.acquire() as conn:
        await record_submission(conn, spec, submitted_at=datetime.now(UTC))
    await db.execute(
        "UPDATE jobs SET state = 'completed', state_rank = 4, finished_at = now()"
        " WHERE tenant = $1 AND job_id = $2",
        tenant,
        job_id,
    )


def signed_by(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check: HMAC-SHA256 over f"{timestamp}.{body}" with the shared secret."""
    want = hmac.new(
        secret.encode(), headers["flotilla-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(headers.get("flotilla-signature", ""), want)
