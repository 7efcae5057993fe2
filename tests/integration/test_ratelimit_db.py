"""The shared submit bucket in Postgres: refill, refusal, and a commit that waits for no disk."""

from __future__ import annotations

import asyncpg

from control.api.ratelimit import TAKE_TOKEN, take_token


async def test_a_bucket_gives_its_burst_then_refuses(db: asyncpg.Pool) -> None:
    # A rate this low refills nothing within the test, however slow the machine.
    taken = [await take_token(db, "t1", 1e-6, 3) for _ in range(5)]
    assert taken == [True, True, True, False, False]
    assert await take_token(db, "t2", 1e-6, 3)  # another tenant's bucket is its own
    tokens = await db.fetchval("SELECT tokens FROM tenant_buckets WHERE tenant = 't1'")
    assert 0.0 <= tokens < 1.0


async def test_a_take_commits_without_waiting_for_the_wal_flush(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        async with conn.transaction():
            assert await conn.fetchval(TAKE_TOKEN, "t", 1.0, 5.0) is not None
            # Read at commit time: this transaction commits without waiting for the flush.
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
        # Only that transaction: the connection's next ones (say a job's row) stay durable.
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
        refused = await conn.fetchval(TAKE_TOKEN, "t", 1e-6, 0.5)  # burst below one token
        assert refused is None
        assert await conn.fetchval("SHOW synchronous_commit") == "on"
