"""The migrations end at control/db/schema.sql, apply once, and survive concurrent start-ups."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest_asyncio

from control.db.migrate import load_migrations, migrate
from control.devstack.stack import ExternalPostgres, PostgresServer
from tests.support.databases import migrated_before

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "control" / "db" / "schema.sql"
Server = PostgresServer | ExternalPostgres

#: The catalog, as comparable text: tables and columns, constraints, indexes, functions.
CATALOG = {
    "columns": """
        SELECT table_name, ordinal_position, column_name, data_type, udt_name, is_nullable,
               column_default
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
        ORDER BY table_name, ordinal_position""",
    "constraints": """
        SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
        FROM pg_constraint
        WHERE connamespace = 'public'::regnamespace
          AND conrelid::regclass::text <> 'schema_migrations'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'schema_migrations'
        ORDER BY 1, 2""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace ORDER BY 1""",
}


async def dump(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {name: [tuple(r) for r in await conn.fetch(sql)] for name, sql in CATALOG.items()}
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def empty_db(pg_server: Server) -> AsyncIterator[str]:
    """A database with no schema at all (not cloned from the test template)."""
    if isinstance(pg_server, PostgresServer):
        await pg_server.start()
    name = "m_" + secrets.token_hex(6)
    await pg_server.create_database(name)
    try:
        yield pg_server.dsn(name)
    finally:
        await pg_server.drop_database(name)


async def test_migrations_end_at_the_schema_file(empty_db: str, database_url: str) -> None:
    versions = [m.version for m in await asyncio.to_thread(load_migrations)]
    assert await migrate(empty_db) == versions
    assert await migrate(empty_db) == []

    # database_url may already carry migrations (a template hook): start it from nothing.
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        await conn.execute(await asyncio.to_thread(SCHEMA_FILE.read_text))
    finally:
        await conn.close()
    migrated, declared = await dump(empty_db), await dump(database_url)
    assert migrated["columns"], "no tables were created"
    for part in CATALOG:
        assert migrated[part] == declared[part], f"{part} differ from control/db/schema.sql"


async def test_concurrent_start_ups_apply_once(empty_db: str) -> None:
    versions = [m.version for m in await asyncio.to_thread(load_migrations)]
    results = await asyncio.gather(*(migrate(empty_db) for _ in range(4)))
    assert sorted(results) == [[], [], [], versions]
    conn = await asyncpg.connect(empty_db)
    try:
        rows = await conn.fetch("SELECT version, name FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    assert [r["version"] for r in rows] == versions


async def test_migrate_takes_a_pool(empty_db: str) -> None:
    pool = await asyncpg.create_pool(empty_db, min_size=1, max_size=2)
    try:
        assert await migrate(pool) != []
        async with pool.acquire() as conn:
            assert await migrate(conn) == []
    finally:
        await pool.close()


async def test_job_ids_become_per_tenant_keeping_every_row(empty_db: str) -> None:
    """0120: rows written when job ids were fleet-wide take their job's tenant, and the same
    id is then free for another tenant."""
    every = await asyncio.to_thread(load_migrations)
    await migrated_before(empty_db, 120)  # the database as the previous release left it
    conn = await asyncpg.connect(empty_db)
    try:
        await conn.execute(
            """
            INSERT INTO jobs (job_id, tenant, state) VALUES ('j1', 'acme', 'failed');
            INSERT INTO job_events (event_id, job_id, kind, node_id, ts, body)
                VALUES ('e1', 'j1', 'accepted', 'n1', now(), '{}'),
                       ('n-e', NULL, 'heartbeat', 'n1', now(), '{}');
            INSERT INTO job_attempts (job_id, attempt, node_id, event_id, kind, ts)
                VALUES ('j1', 1, 'n1', 'e1', 'accepted', now());
            INSERT INTO dead_letters (job_id, stream_seq, source, reason)
                VALUES ('j1', 7, 'terminated', 'boom');
            INSERT INTO webhook_deliveries (job_id, url) VALUES ('j1', 'https://example.com/');
            """
        )
    finally:
        await conn.close()
    assert await migrate(empty_db) == [m.version for m in every if m.version >= 120]
    conn = await asyncpg.connect(empty_db)
    try:
        for table in ("jobs", "job_attempts", "dead_letters", "webhook_deliveries"):
            got = await conn.fetch(f"SELECT tenant, job_id FROM {table}")
            assert [tuple(r) for r in got] == [("acme", "j1")], table
        events = await conn.fetch("SELECT event_id, tenant FROM job_events ORDER BY event_id")
        assert [tuple(r) for r in events] == [("e1", "acme"), ("n-e", None)]
        # Another tenant may now have a job j1 of its own.
        await conn.execute("INSERT INTO jobs (job_id, tenant) VALUES ('j1', 'bravo')")
        assert await conn.fetchval("SELECT count(*) FROM jobs WHERE job_id = 'j1'") == 2
    finally:
        await conn.close()
