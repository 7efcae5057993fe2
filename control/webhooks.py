"""Job-end webhooks: POST the job's result to its callback URL, HMAC-signed, retried with back-off.

Signature: hex HMAC-SHA256 with the tenant's secret over f"{timestamp}.{body}", sent in
`Flotilla-Signature` beside `Flotilla-Timestamp`. Every attempt is a `webhook` row in job_events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import asyncpg

from control.api.jobquery import get_job
from control.api.tenants import get_tenant
from control.httppost import post
from schemas.codec import encode

log = logging.getLogger("flotilla.webhooks")

ENQUEUE = """
INSERT INTO webhook_deliveries (job_id, url)
SELECT job_id, spec->>'callback_url' FROM jobs
WHERE state IN ('completed', 'failed', 'cancelled') AND spec->>'callback_url' IS NOT NULL
  AND finished_at > now() - make_interval(secs => $1)
ON CONFLICT (job_id) DO NOTHING
"""
# Claim due deliveries by pushing next_at out by a lease, so instances do not double-send.
CLAIM = """
UPDATE webhook_deliveries SET next_at = now() + make_interval(secs => $2)
WHERE job_id IN (SELECT job_id FROM webhook_deliveries WHERE done_at IS NULL AND next_at <= now()
                 ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING job_id, url, attempts
"""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@dataclass(slots=True)
class WebhookSettings:
    interval: float = 2.0
    max_attempts: int = 6
    backoff: float = 5.0  # seconds before the 2nd attempt; doubles each time
    lookback: float = 86400.0  # only jobs finished this recently get a webhook
    batch: int = 50
    timeout: float = 10.0


class WebhookSender:
    def __init__(self, db: asyncpg.Pool, settings: WebhookSettings | None = None) -> None:
        self.db, self.s = db, settings or WebhookSettings()

    async def tick(self) -> int:
        """Enqueue newly finished jobs and send what is due; returns attempts made."""
        await self.db.execute(ENQUEUE, self.s.lookback)
        rows = await self.db.fetch(CLAIM, self.s.batch, self.s.timeout * 3)
        for row in rows:
            await self._deliver(row["job_id"], row["url"], row["attempts"] + 1)
        return len(rows)

    async def _deliver(self, job_id: str, url: str, attempt: int) -> None:
        info = await get_job(self.db, job_id)
        if info is None:
            return
        body = encode(info)
        ts = str(int(time.time()))
        headers = {"Flotilla-Timestamp": ts}
        tenant = await get_tenant(self.db, info.tenant)
        if tenant is not None:
            headers["Flotilla-Signature"] = sign(tenant.webhook_secret, ts, body)
        status: int | None = None
        error: str | None = None
        try:
            status = await post(url, body, headers, self.s.timeout)
            if not 200 <= status < 300:
                error = f"HTTP {status}"
        except (OSError, TimeoutError, ValueError) as exc:
            error = repr(exc)[:500]
        ok = error is None
        final = ok or attempt >= self.s.max_attempts
        delay = self.s.backoff * 2 ** (attempt - 1)
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = $2, delivered = $3, last_status = $4,"
                " last_error = $5, next_at = now() + make_interval(secs => $6),"
                " done_at = CASE WHEN $7 THEN now() END WHERE job_id = $1",
                job_id, attempt, ok, status, error, delay, final,
            )  # fmt: skip
            event = {"url": url, "attempt": attempt, "status": status, "error": error,
                     "delivered": ok, "final": final}  # fmt: skip
            await conn.execute(
                "INSERT INTO job_events (event_id, job_id, kind, node_id, attempt, ts, body)"
                " VALUES ($1, $2, 'webhook', 'control', $3, now(), $4::jsonb)"
                " ON CONFLICT (event_id) DO NOTHING",
                f"webhook-{job_id}-{attempt}", job_id, attempt, json.dumps(event),
            )  # fmt: skip
        if not ok:
            log.warning("webhook for %s attempt %d failed: %s", job_id, attempt, error)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except Exception:  # Postgres down: try again next interval
                log.exception("webhook tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.interval)
