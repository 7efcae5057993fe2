"""The shared submit bucket in Postgres: refill, refusal, the tenant's own limits read in the
same statement, and a commit that waits for no disk."""

from __future__ import annotations

import asyncpg

from control.api import tenants
from control.api.ratelimit import TAKE_TOKEN, take_token


async def test_a_bucket_gives_its_burst_then_refuses(db: asyncpg.Pool) -> None:
    # A rate this low refills nothing within the test, however slow the machine.
    taken = [(await take_token(db, "t1", 1e-6, 3)).taken for _ in range(5)]
    assert taken == [True, True, True, False, False]
    assert (await take_token(db, "t2", 1e-6, 3)).taken  # another tenant's bucket is its own
    tokens = await db.fetchval("SELECT tokens FROM tenant_buckets WHERE tenant = 't1'")
    assert 0.0 <= tokens < 1.0
    # No `tenants` row: the fleet's defaults, and no queue limit of its own.
    assert (await take_token(db, "t3", 1e-6, 3)).max_queued is None


async def test_a_tenant_with_its_own_limits_draws_at_them(db: asyncpg.Pool) -> None:
    await tenants.create_tenant(db, "own", max_queued=7, submit_rate=1e-6, submit_burst=2)
    takes = [await take_token(db, "own", 1000.0, 50) for _ in range(3)]  # defaults ignored
    assert [t.taken for t in takes] == [True, True, False]
    assert {t.max_queued for t in takes} == {7}
    # Raised limits apply from the next take, in every instance (they read the same row).
    # Refills a token per nanosecond: the time between two statements always holds one.
    await tenants.create_tenant(db, "own", max_queued=7, submit_rate=1e9, submit_burst=2)
    assert (await take_token(db, "own", 1e-6, 1)).taken


async def test_a_take_commits_without_waiting_for_the_wal_flush(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(TAKE_TOKEN, "t", 1.0, 5.0)
            assert row is not None and row["taken"]
            # Read at commit time: this transaction commits without waiting for the flush.
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        # Only that transaction: the connection's next ones (say a job's row) stay durable.
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        refused = await conn.fetchrow(TAKE_TOKEN, "t", 1e-6, 0.5)  # burst below one token
        assert refused is not None and not refused["taken"]
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
