"""API keys at rest: create, list, rotate, revoke. Only a key's sha256 is stored; the key itself
is returned once, by the call that makes it.

sha256 (not a slow password hash) is enough because a key is 32 random bytes: there is nothing
to guess from a dictionary, and a fast hash keeps the per-request lookup cheap.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Literal

import asyncpg

from schemas import api

KEY_PREFIX = "flk_"

_COLUMNS = """key_id, tenant, role, name, created_at, expires_at, last_used_at, revoked_at,
rotated_from, revoked"""


class UnknownTenant(Exception):
    def __init__(self, tenant: str) -> None:
        super().__init__(f"no tenant {tenant!r} (create it first: `flotilla tenants create`)")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh (key, key id)."""
    return KEY_PREFIX + secrets.token_urlsafe(32), "k_" + secrets.token_hex(6)


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def key_info(row: asyncpg.Record, now: datetime | None = None) -> api.KeyInfo:
    now = now or datetime.now(UTC)
    expires = row["expires_at"]
    state: Literal["active", "expired", "revoked"] = "active"
    if row["revoked"]:
        state = "revoked"
    elif expires is not None and expires <= now:
        state = "expired"
    return api.KeyInfo(
        key_id=row["key_id"], tenant=row["tenant"], role=row["role"], name=row["name"],
        state=state, created_at=row["created_at"].timestamp(), expires_at=_ts(expires),
        last_used_at=_ts(row["last_used_at"]), revoked_at=_ts(row["revoked_at"]),
        rotated_from=row["rotated_from"],
    )  # fmt: skip


async def insert_key(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, *, role: api.Role = "tenant",
    name: str = "", expires_in_s: float | None = None, rotated_from: str | None = None,
) -> tuple[str, api.KeyInfo]:  # fmt: skip
    """Store a new key's hash; returns the key (this once) and what `key.list` will show."""
    key, key_id = new_key()
    expires = None if expires_in_s is None else timedelta(seconds=expires_in_s)
    try:
        row = await conn.fetchrow(
            "INSERT INTO api_keys (key_hash, key_id, tenant, role, name, expires_at, rotated_from)"
            " VALUES ($1, $2, $3, $4, $5, now() + $6::interval, $7)"
            f" RETURNING {_COLUMNS}",
            hash_key(key), key_id, tenant, role, name, expires, rotated_from,
        )  # fmt: skip
    except asyncpg.ForeignKeyViolationError:
        raise UnknownTenant(tenant) from None
    assert row is not None
    return key, key_info(row)


async def list_keys(db: asyncpg.Pool, tenant: str | None = None) -> list[api.KeyInfo]:
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM api_keys WHERE $1::text IS NULL OR tenant = $1"
        " ORDER BY tenant, created_at, key_id",
        tenant,
    )
    now = datetime.now(UTC)
    return [key_info(r, now) for r in rows]


async def rotate_key(
    db: asyncpg.Pool, key_id: str, grace_s: float, expires_in_s: float | None = None
) -> api.KeyCreated | None:
    """A new key with the old one's tenant, role and name; the old one ends after `grace_s`.
    None when there is no usable key with that id (unknown, revoked or expired)."""
    async with db.acquire() as conn, conn.transaction():
        old = await conn.fetchrow(
            "SELECT key_id, tenant, role, name, created_at, expires_at FROM api_keys"
            " WHERE key_id = $1 AND NOT revoked AND (expires_at IS NULL OR expires_at > now())"
            " FOR UPDATE",
            key_id,
        )
        if old is None:
            return None
        if expires_in_s is None and old["expires_at"] is not None:
            expires_in_s = (old["expires_at"] - old["created_at"]).total_seconds()
        key, info = await insert_key(
            conn, old["tenant"], role=old["role"], name=old["name"], expires_in_s=expires_in_s,
            rotated_from=key_id,
        )  # fmt: skip
        ends = await conn.fetchval(
            "UPDATE api_keys SET expires_at = LEAST(expires_at, now() + $2::interval)"
            " WHERE key_id = $1 RETURNING expires_at",
            key_id, timedelta(seconds=grace_s),
        )  # fmt: skip
    return api.KeyCreated(key=key, info=info, old_key_expires_at=_ts(ends))


async def revoke_key(db: asyncpg.Pool, key_id: str) -> bool | None:
    """True when revoked now, False when it already was, None when there is no such key."""
    row = await db.fetchrow(
        "UPDATE api_keys k SET revoked = true, revoked_at = COALESCE(k.revoked_at, now())"
        " FROM api_keys old WHERE k.key_id = $1 AND old.key_id = k.key_id"
        " RETURNING old.revoked AS was",
        key_id,
    )
    return None if row is None else not row["was"]


async def active_operator_keys(db: asyncpg.Pool | asyncpg.Connection) -> int:
    n = await db.fetchval(
        "SELECT count(*) FROM api_keys WHERE role = 'operator' AND NOT revoked"
        " AND (expires_at IS NULL OR expires_at > now())"
    )
    return int(n or 0)
