"""Per-tenant token buckets for the API's submit rate.

With a database, the bucket is a `tenant_buckets` row that every control-plane instance draws
from (`take_token`), so N instances allow a tenant's rate once, not N times. `TenantLimiter`, in
memory, serves only an instance that has no database (tests, a bare API).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg

MAX_TENANTS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TenantLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, _Bucket] = {}

    def allow(
        self, tenant: str, now: float | None = None, rate: float | None = None,
        burst: int | None = None,
    ) -> bool:  # fmt: skip
        """Take one token; `rate`/`burst` override the defaults for this tenant."""
        now = time.monotonic() if now is None else now
        rate = self.rate if rate is None else rate
        cap = float(self.burst if burst is None else burst)
        b = self._buckets.get(tenant)
        if b is None:
            if len(self._buckets) >= MAX_TENANTS:  # bound memory: forget the oldest tenant
                self._buckets.pop(next(iter(self._buckets)))
            b = self._buckets[tenant] = _Bucket(cap, now)
        b.tokens = min(cap, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True


#: Refill from the elapsed time, take one token if one is there, and say the tenant's queue
#: limit. The tenant's own `tenants` row sets rate and burst ($2 and $3 are the fleet's defaults
#: for a tenant without one), read in the same statement: one round trip per submit.
#: The row lock serializes one tenant's submits across instances; time is the database's clock.
#: Committed without waiting for the WAL flush (`synchronous_commit` off for this transaction
#: alone, set inside the one statement so it costs no round trip): a token is not worth a disk
#: wait on every submit, and a database crash can only forget the last few takes (at most
#: 3 x wal_writer_delay), which lets a tenant submit that many more once.
TAKE_TOKEN = """
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true)),
lim AS (
    SELECT COALESCE(t.submit_rate, $2::float8) AS rate,
           COALESCE(t.submit_burst::float8, $3::float8) AS burst, t.max_queued
    FROM relaxed LEFT JOIN tenants t ON t.tenant = $1
),
took AS (
    INSERT INTO tenant_buckets AS b (tenant, tokens, refilled_at)
    SELECT $1, lim.burst - 1, now() FROM lim
    ON CONFLICT (tenant) DO UPDATE SET
        tokens = LEAST(EXCLUDED.tokens + 1, b.tokens
            + GREATEST(0, extract(epoch FROM now() - b.refilled_at))::float8
            * (SELECT rate FROM lim)) - 1,
        refilled_at = now()
    WHERE LEAST(EXCLUDED.tokens + 1, b.tokens
            + GREATEST(0, extract(epoch FROM now() - b.refilled_at))::float8
            * (SELECT rate FROM lim)) >= 1
    RETURNING tokens
)
SELECT EXISTS (SELECT FROM took) AS taken, lim.max_queued FROM lim
"""


@dataclass(frozen=True, slots=True)
class Take:
    taken: bool
    #: The tenant's own queue limit; None for a tenant without a `tenants` row.
    max_queued: int | None


async def take_token(db: asyncpg.Pool, tenant: str, rate: float, burst: int) -> Take:
    """One submit's token from the tenant's shared bucket (`taken` False when it is empty), at
    the tenant's own rate and burst, or `rate` and `burst` for a tenant without limits."""
    row = await db.fetchrow(TAKE_TOKEN, tenant, float(rate), float(burst))
    assert row is not None  # one row always: `lim` has exactly one
    return Take(bool(row["taken"]), row["max_queued"])
