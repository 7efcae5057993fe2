"""Who a request acts as: a tenant key (that tenant's jobs only) or an operator (fleet-wide)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from control.api.keys import hash_key
from control.api.tenants import Tenant
from schemas.api import Role

#: last_used_at is written at most this often per key, not on every request.
LAST_USED_EVERY = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Identity:
    role: Role
    #: The key's tenant; None for the keyless operator of a dev fleet.
    tenant: str | None = None
    key_id: str | None = None
    #: The key's tenant's limits (None without a key).
    limits: Tenant | None = None

    @property
    def operator(self) -> bool:
        return self.role == "operator"

    @property
    def scope(self) -> str | None:
        """The only tenant whose jobs this caller may see; None: every tenant's."""
        return None if self.operator else self.tenant


#: Requests without a key when keys are not required (a dev or demo fleet, one trusted operator).
KEYLESS_OPERATOR = Identity(role="operator")


async def identity_for_key(db: asyncpg.Pool, key: str) -> Identity | None:
    """The identity of a live key; None for an unknown, revoked or expired one."""
    row = await db.fetchrow(
        "SELECT k.key_id, k.role, k.last_used_at, now() AS now, t.tenant, t.webhook_secret,"
        " t.max_queued, t.submit_rate, t.submit_burst"
        " FROM api_keys k JOIN tenants t USING (tenant)"
        " WHERE k.key_hash = $1 AND NOT k.revoked"
        " AND (k.expires_at IS NULL OR k.expires_at > now())",
        hash_key(key),
    )
    if row is None:
        return None
    last: datetime | None = row["last_used_at"]
    if last is None or row["now"] - last >= LAST_USED_EVERY:
        # Another instance may write it too within the minute: harmless, it is a coarse mark.
        await db.execute(
            "UPDATE api_keys SET last_used_at = now() WHERE key_id = $1", row["key_id"]
        )
    limits = Tenant(
        row["tenant"], row["webhook_secret"], row["max_queued"], row["submit_rate"],
        row["submit_burst"],
    )  # fmt: skip
    return Identity(role=row["role"], tenant=row["tenant"], key_id=row["key_id"], limits=limits)
