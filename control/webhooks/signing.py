"""Webhook signatures, and the secret each callback is signed with: every callback is signed.

Signature: hex HMAC-SHA256 over f"{timestamp}.{body}", sent as `Flotilla-Signature` beside
`Flotilla-Timestamp`. The key is the tenant's own `webhook_secret` when the tenant has a row in
`tenants`, else the fleet secret: read from `webhooks.secret_file` when that is set (the same
file on every instance), else generated on first use and kept in Postgres
(`webhook_fleet_secret`), so every instance signs with the same one.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from pathlib import Path

import asyncpg

from control.api.tenants import get_tenant

MIN_SECRET_CHARS = 32
_CREATE = "INSERT INTO webhook_fleet_secret (secret) VALUES ($1) ON CONFLICT (id) DO NOTHING"
_READ = "SELECT secret FROM webhook_fleet_secret"


class SecretUnavailable(Exception):
    """No fleet secret can be had (a bad `secret_file`): nothing is sent unsigned instead."""


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


class Secrets:
    """The signing key per tenant; the fleet secret is loaded once and then kept."""

    def __init__(self, db: asyncpg.Pool, secret_file: str | None) -> None:
        self.db, self.secret_file = db, secret_file
        self._fleet: str | None = None

    async def for_tenant(self, tenant: str) -> str:
        row = await get_tenant(self.db, tenant)
        return row.webhook_secret if row is not None else await self.fleet()

    async def fleet(self) -> str:
        if self._fleet is None:
            if self.secret_file is not None:
                self._fleet = await asyncio.to_thread(_read_file, Path(self.secret_file))
            else:
                # Two statements: the SELECT sees a row another instance inserted meanwhile.
                await self.db.execute(_CREATE, secrets.token_hex(32))
                self._fleet = str(await self.db.fetchval(_READ))
        return self._fleet


def _read_file(path: Path) -> str:
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretUnavailable(f"webhooks.secret_file {str(path)!r}: {exc}") from exc
    if len(secret) < MIN_SECRET_CHARS:
        raise SecretUnavailable(
            f"webhooks.secret_file {str(path)!r} holds fewer than {MIN_SECRET_CHARS} characters"
        )
    return secret
