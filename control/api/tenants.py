"""Tenants: their limits and webhook secrets (their keys are in keys.py)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import asyncpg

from control.api.keys import insert_key
from schemas import api

KEY_HEADER = api.KEY_HEADER  # the wire contract's; kept here for the API's own code


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant: str
    webhook_secret: str
    max_queued: int
    submit_rate: float
    submit_burst: int


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


async def create_key(
    pool: asyncpg.Pool, tenant: str, name: str = "", role: api.Role = "tenant"
) -> str:
    """A new API key for the tenant; only its hash is kept, so return it once."""
    key, _ = await insert_key(pool, tenant, role=role, name=name)
    return key


async def add_tenant(pool: asyncpg.Pool, req: api.TenantCreateRequest) -> api.TenantCreated | None:
    """Create a tenant with a fresh webhook secret; None when it exists (its secret is kept)."""
    secret = secrets.token_hex(32)
    row = await pool.fetchrow(
        "INSERT INTO tenants (tenant, webhook_secret, max_queued, submit_rate, submit_burst)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (tenant) DO NOTHING"
        f" RETURNING {_INFO_COLS}, 0 AS active_keys",
        req.tenant, secret, req.max_queued, req.submit_rate, req.submit_burst,
    )  # fmt: skip
    return None if row is None else api.TenantCreated(info=_info(row), webhook_secret=secret)


async def list_tenants(pool: asyncpg.Pool) -> list[api.TenantInfo]:
    rows = await pool.fetch(
        f"SELECT {_INFO_COLS}, (SELECT count(*) FROM api_keys k WHERE k.tenant = tenants.tenant"
        " AND NOT k.revoked AND (k.expires_at IS NULL OR k.expires_at > now())) AS active_keys"
        " FROM tenants ORDER BY tenant"
    )
    return [_info(r) for r in rows]


_INFO_COLS = "tenant, max_queued, submit_rate, submit_burst, created_at"


def _info(row: asyncpg.Record) -> api.TenantInfo:
    return api.TenantInfo(
        tenant=row["tenant"], max_queued=row["max_queued"], submit_rate=row["submit_rate"],
        submit_burst=row["submit_burst"], created_at=row["created_at"].timestamp(),
        active_keys=row["active_keys"],
    )  # fmt: skip


_COLS = "t.tenant, t.webhook_secret, t.max_queued, t.submit_rate, t.submit_burst"


def _tenant(row: asyncpg.Record) -> Tenant:
    return Tenant(
        row["tenant"], row["webhook_secret"], row["max_queued"], row["submit_rate"],
        row["submit_burst"],
    )  # fmt: skip


async def get_tenant(pool: asyncpg.Pool, tenant: str) -> Tenant | None:
    row = await pool.fetchrow(f"SELECT {_COLS} FROM tenants t WHERE t.tenant = $1", tenant)
    return None if row is None else _tenant(row)


async def queued_count(pool: asyncpg.Pool, tenant: str) -> int:
    n = await pool.fetchval(
        "SELECT count(*) FROM jobs WHERE tenant = $1 AND state IN ('submitted', 'queued')", tenant
    )
    return int(n or 0)
