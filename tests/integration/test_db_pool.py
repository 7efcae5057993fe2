"""The control plane's Postgres pool on a real server: a release costs no round trip, and what
the skipped reset would have cleaned is still cleaned or never kept."""

from __future__ import annotations

import asyncpg

from control.db import create_pool


async def test_a_release_sends_no_query(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")
            before = _queries(conn)
        async with pool.acquire() as conn:  # the same connection: the pool holds one
            assert _queries(conn) == before  # asyncpg's default reset ran a query here
    finally:
        await pool.close()


async def test_an_open_transaction_is_still_rolled_back_on_release(database_url: str) -> None:
    pool = await create_pool(database_url, min_size=1, max_size=1)
    try:
        await pool.execute("CREATE TABLE pool_probe (n int)")
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")  # unmanaged: a caller that forgot to end it
            await conn.execute("INSERT INTO pool_probe VALUES (1)")
        assert await pool.fetchval("SELECT count(*) FROM pool_probe") == 0
        # Transaction-scoped settings and locks, as the control plane takes them, end with it.
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT set_config('synchronous_commit', 'off', true)")
            await conn.execute("SELECT pg_advisory_xact_lock(42)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
            held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1"
            assert await conn.fetchval(held, conn.get_server_pid()) == 0
    finally:
        await pool.close()


def _queries(conn: asyncpg.Connection) -> int:
    # The protocol's count of queries run on this connection (what max_queries is checked on).
    count: int = conn._con._protocol.queries_count  # type: ignore[attr-defined]
    return count
