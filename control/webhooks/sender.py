"""Job-end webhooks: POST the job's result to its callback URL, signed, retried with back-off.

Each attempt: sign (control.webhooks.signing), then vet the URL (control.webhooks.target) and
POST to the vetted address (control.webhooks.post), both within `webhooks.timeout`. Every
attempt is a `webhook` row in job_events, which the submitter can read: it carries the attempt,
the HTTP status when there was one, and the failure category, never an address, a port or error
text; those go to the log, one line per failure.
A `refused` callback is final at once: no later attempt would be let through either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import asyncpg

from control.api.jobquery import get_job
from control.config import WebhookSettings
from control.db import is_transient
from control.webhooks.post import deliver
from control.webhooks.signing import Secrets, SecretUnavailable, sign
from control.webhooks.target import REFUSED, DeliveryFailed
from schemas.codec import encode

log = logging.getLogger("flotilla.webhooks")

#: Only jobs finished this recently get a webhook (so turning webhooks on sends no backlog).
LOOKBACK_S = 86400.0
#: Deliveries claimed per tick.
BATCH = 50

ENQUEUE = """
INSERT INTO webhook_deliveries (tenant, job_id, url)
SELECT tenant, job_id, spec->>'callback_url' FROM jobs
WHERE state IN ('completed', 'failed', 'cancelled') AND spec->>'callback_url' IS NOT NULL
  AND finished_at > now() - make_interval(secs => $1)
ON CONFLICT (tenant, job_id) DO NOTHING
"""
# Claim due deliveries by pushing next_at out by a lease, so instances do not double-send.
CLAIM = """
UPDATE webhook_deliveries SET next_at = now() + make_interval(secs => $2)
WHERE (tenant, job_id) IN (
    SELECT tenant, job_id FROM webhook_deliveries WHERE done_at IS NULL AND next_at <= now()
    ORDER BY next_at LIMIT $1 FOR UPDATE SKIP LOCKED)
RETURNING tenant, job_id, url, attempts
"""
RECORD = """
UPDATE webhook_deliveries SET attempts = $2, delivered = $3, last_status = $4, last_error = $5,
    next_at = now() + make_interval(secs => $6), done_at = CASE WHEN $7 THEN now() END
WHERE tenant = $8 AND job_id = $1
"""
EVENT = """
INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, attempt, ts, body)
VALUES ($1, $5, $2, 'webhook', 'control', $3, now(), $4::jsonb)
ON CONFLICT (event_id) DO NOTHING
"""


class WebhookSender:
    def __init__(self, db: asyncpg.Pool, settings: WebhookSettings | None = None) -> None:
        self.db, self.s = db, settings or WebhookSettings()
        self.secrets = Secrets(db, self.s.secret_file)

    async def tick(self) -> int:
        """Enqueue newly finished jobs and send what is due; returns attempts made."""
        await self.db.execute(ENQUEUE, LOOKBACK_S)
        rows = await self.db.fetch(CLAIM, BATCH, self.s.timeout * 3)
        for row in rows:
            await self._deliver(row["tenant"], row["job_id"], row["url"], row["attempts"] + 1)
        return len(rows)

    async def _deliver(self, tenant: str, job_id: str, url: str, attempt: int) -> None:
        info = await get_job(self.db, tenant, job_id)
        if info is None:
            return
        body = encode(info)
        ts = str(int(time.time()))
        # Before any network work: without a key nothing is sent (the claim lease retries it).
        signature = sign(await self.secrets.for_tenant(info.tenant), ts, body)
        headers = {"Flotilla-Timestamp": ts, "Flotilla-Signature": signature}
        status: int | None = None
        try:
            status, target = await deliver(url, body, headers, self.s.allow_hosts, self.s.timeout)
        except DeliveryFailed as exc:
            category: str | None = exc.category
            detail = str(exc)
        else:
            category = None if 200 <= status < 300 else f"http {status}"
            detail = f"from {target}"
        if category is not None:  # the operator's one line, with what the tenant never sees
            log.warning("webhook for %s/%s attempt %d: %s (%s)", tenant, job_id, attempt, category,
                        detail)  # fmt: skip
        await self._record(tenant, job_id, attempt, status, category)

    async def _record(
        self, tenant: str, job_id: str, attempt: int, status: int | None, err: str | None
    ) -> None:
        ok = err is None
        final = ok or err == REFUSED or attempt >= self.s.max_attempts
        delay = self.s.backoff * 2 ** (attempt - 1)
        event = {"attempt": attempt, "status": status, "error": err, "delivered": ok,
                 "final": final}  # fmt: skip
        async with self.db.acquire() as conn, conn.transaction():
            await conn.execute(RECORD, job_id, attempt, ok, status, err, delay, final, tenant)
            await conn.execute(EVENT, f"webhook-{tenant}-{job_id}-{attempt}", job_id, attempt,
                               json.dumps(event), tenant)  # fmt: skip

    async def run(self, stop: asyncio.Event) -> None:
        outage = False
        while not stop.is_set():
            try:
                await self.tick()
                if outage:
                    log.info("webhooks: Postgres is back")
                outage = False
            except SecretUnavailable as exc:  # a config problem: say it plainly, keep trying
                log.error("webhooks paused, nothing is sent unsigned: %s", exc)
            except Exception as exc:
                if not is_transient(exc):
                    log.exception("webhook tick failed")
                elif not outage:  # one line when an outage starts, one when it ends
                    log.warning("webhooks wait for Postgres (%s); retrying every %gs", exc,
                                self.s.interval)  # fmt: skip
                    outage = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.s.interval)
