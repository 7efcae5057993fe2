"""Tenants and API keys: keys are stored as sha256 hashes and map a request to its tenant."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

KEY_HEADER = "Flotilla-Api-Key"


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant: str
    webhook_secret: str
    max_queued: int
    submit_rate: float
    submit_burst: int


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def create_tenant(
    pool: asyncpg.Pool, tenant: str, *, max_queued: int = 10_000, submit_rate: float = 50.0,
    submit_burst: int = 100, webhook_secret: str | None = None,
) -> str:  # fmt: skip
    """Create (or update) a tenant; returns its webhook secret."""
    secret = webhook_secret or secrets.token_hex(32)
    await pool.execute(
        "INSERT INTO tenants (tenant, webhook_secret, max_queued, submit_rate, submit_burst)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant) DO UPDATE SET"
        " webhook_secret = EXCLUDED.webhook_secret, max_queued = EXCLUDED.max_queued,"
        " submit_rate = EXCLUDED.submit_rate, submit_burst = EXCLUDED.submit_burst",
        tenant, secret, max_queued, submit_rate, submit_burst,
    )  # fmt: skip
    return secret


async def create_key(pool: asyncpg.Pool, tenant: str, name: str = "") -> str:
    """A new API key for the tenant; only its hash is kept, so return it once."""
    key = "flk_" + secrets.token_urlsafe(32)
    await pool.execute(
        "INSERT INTO api_keys (key_hash, tenant, name) VALUES ($1, $2, $3)",
        hash_key(key), tenant, name,
    )  # fmt: skip
    return key


_COLS = "t.tenant, t.webhook_secret, t.max_queued, t.submit_rate, t.submit_burst"


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        row["tenant"], row["webhook_secret"], row["max_queued"], row["submit_rate"],
        row["submit_burst"],
    )  # fmt: skip


async def tenant_for_key(pool: asyncpg.Pool, key: str) -> Tenant | None:
    row = await pool.fetchrow(
        f"SELECT {_COLS} FROM api_keys k JOIN tenants t USING (tenant)"
        " WHERE k.key_hash = $1 AND NOT k.revoked",
        hash_key(key),
    )
    return None if row is None else _tenant(row)


async def get_tenant(pool: asyncpg.Pool, tenant: str) -> Tenant | None:
    row = await pool.fetchrow(f"SELECT {_COLS} FROM tenants t WHERE t.tenant = $1", tenant)
    return None if row is None else _tenant(row)


async def queued_count(pool: asyncpg.Pool, tenant: str) -> int:
    n = await pool.fetchval(
        "SELECT count(*) FROM jobs WHERE tenant = $1 AND state IN ('submitted', 'queued')", tenant
    )
    return int(n or 0)
