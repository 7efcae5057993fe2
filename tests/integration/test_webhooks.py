"""Webhooks against a real local HTTP endpoint: signed POST, verification, retry on failure."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest_asyncio

from control.api import tenants
from control.api.jobquery import job_events
from control.db.migrate import migrate
from control.db.store import record_submission
from control.webhooks import WebhookSender, WebhookSettings
from schemas.jobs import JobSpec
from schemas.operations import Canary


@pytest_asyncio.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate(database_url)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    try:
        yield pool
    finally:
        await pool.close()


class Receiver:
    """A real HTTP endpoint on 127.0.0.1 that answers each POST with the next planned status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        headers: dict[str, str] = {}
        for _ in range(100):
            line = (await reader.readline()).decode().strip()
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers["content-length"]))
        self.got.append((headers, body))
        status = self.statuses[min(len(self.got), len(self.statuses)) - 1]
        writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def finished_job(db: asyncpg.Pool, job_id: str, url: str, tenant: str) -> None:
    spec = JobSpec(
        job_id=job_id, tenant=tenant, input="file:///x", operation=Canary(), callback_url=url
    )
    async with db.acquire() as conn:
        await record_submission(conn, spec, submitted_at=datetime.now(UTC))
    await db.execute(
        "UPDATE jobs SET state = 'completed', state_rank = 4, finished_at = now()"
        " WHERE job_id = $1",
        job_id,
    )


async def test_signed_post_retried_until_delivered(db: asyncpg.Pool) -> None:
    secret = await tenants.create_tenant(db, "acme")
    rx = Receiver([500, 200])
    await rx.start()
    try:
        await finished_job(db, "w1", f"http://127.0.0.1:{rx.port}/hook?x=1", "acme")
        sender = WebhookSender(db, WebhookSettings(backoff=0.0))
        assert await sender.tick() == 1  # first attempt: HTTP 500
        assert await sender.tick() == 1  # retried at once (zero back-off): 200
        assert await sender.tick() == 0  # nothing left
    finally:
        await rx.stop()
    assert len(rx.got) == 2
    headers, body = rx.got[1]
    want = hmac.new(
        secret.encode(), headers["flotilla-timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(headers["flotilla-signature"], want)
    assert msgspec.json.decode(body)["job_id"] == "w1"
    events = await job_events(db, "w1")
    hooks = [(e.body["status"], e.body["delivered"]) for e in events.events if e.kind == "webhook"]
    assert sorted(hooks) == [(200, True), (500, False)]


async def test_unreachable_endpoint_gives_up_after_max_attempts(db: asyncpg.Pool) -> None:
    await tenants.create_tenant(db, "acme")
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now: connection refused
    await finished_job(db, "w2", f"http://127.0.0.1:{port}/", "acme")
    sender = WebhookSender(db, WebhookSettings(backoff=0.0, max_attempts=3))
    made = [await sender.tick() for _ in range(5)]
    assert made == [1, 1, 1, 0, 0]
    row = await db.fetchrow("SELECT delivered, attempts, done_at FROM webhook_deliveries")
    assert row is not None
    assert (row["delivered"], row["attempts"], row["done_at"] is not None) == (False, 3, True)
