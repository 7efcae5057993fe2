"""Webhooks against a real local HTTP endpoint: signed POST, verification, retry on failure.

The endpoint is on loopback, so these tests allow-list it (`webhooks.allow_hosts`), as a dev or
test setup would; tests/integration/test_webhook_ssrf.py covers what is refused without that.
"""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec

from control.api import tenants
from control.api.jobquery import job_events
from control.config import WebhookSettings
from control.webhooks import WebhookSender
from tests.support.webhooks import Receiver, finished_job, signed_by

LOCAL = ["127.0.0.1"]


async def test_signed_post_retried_until_delivered(db: asyncpg.Pool) -> None:
    secret = await tenants.create_tenant(db, "acme")
    rx = Receiver([500, 200])
    await rx.start()
    try:
        await finished_job(db, "w1", f"http://127.0.0.1:{rx.port}/hook?x=1", "acme")
        sender = WebhookSender(db, WebhookSettings(backoff=0.0, allow_hosts=LOCAL))
        assert await sender.tick() == 1  # first attempt: HTTP 500
        assert await sender.tick() == 1  # retried at once (zero back-off): 200
        assert await sender.tick() == 0  # nothing left
    finally:
        await rx.stop()
    assert len(rx.got) == 2
    headers, body = rx.got[1]
    assert signed_by(secret, headers, body)
    assert msgspec.json.decode(body)["job_id"] == "w1"
    events = await job_events(db, "acme", "w1")
    hooks = [(e.body["status"], e.body["error"], e.body["delivered"])
             for e in events.events if e.kind == "webhook"]  # fmt: skip
    assert sorted(hooks, key=str) == [(200, None, True), (500, "http 500", False)]


async def test_unreachable_endpoint_gives_up_after_max_attempts(db: asyncpg.Pool) -> None:
    await tenants.create_tenant(db, "acme")
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()  # nothing listens there now: connection refused
    await finished_job(db, "w2", f"http://127.0.0.1:{port}/", "acme")
    sender = WebhookSender(db, WebhookSettings(backoff=0.0, max_attempts=3, allow_hosts=LOCAL))
    made = [await sender.tick() for _ in range(5)]
    assert made == [1, 1, 1, 0, 0]
    row = await db.fetchrow("SELECT delivered, attempts, done_at FROM webhook_deliveries")
    assert row is not None
    assert (row["delivered"], row["attempts"], row["done_at"] is not None) == (False, 3, True)
    events = await job_events(db, "acme", "w2")
    assert {e.body["error"] for e in events.events if e.kind == "webhook"} == {"unreachable"}


async def test_silent_endpoint_is_a_timeout(db: asyncpg.Pool) -> None:
    await tenants.create_tenant(db, "acme")
    release = asyncio.Event()
    conns: list[asyncio.StreamWriter] = []

    async def silent(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conns.append(w)  # accepts, reads nothing, answers nothing
        await release.wait()
        w.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await finished_job(db, "w3", f"http://127.0.0.1:{port}/", "acme")
        settings = WebhookSettings(max_attempts=1, timeout=1.0, allow_hosts=LOCAL)
        assert await WebhookSender(db, settings).tick() == 1
    finally:
        release.set()
        server.close()
        await server.wait_closed()
    assert len(conns) == 1
    events = await job_events(db, "acme", "w3")
    [hook] = [e.body for e in events.events if e.kind == "webhook"]
    assert (hook["error"], hook["status"], hook["final"]) == ("timeout", None, True)
