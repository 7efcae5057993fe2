"""The fleet API backed by real Postgres: get, list with paging, events, cancel, API keys."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS

from control.api import tenants
from control.api.service import ApiService, ApiSettings
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas.subjects import Subjects
from tests.support.api import job
from tests.support.ingest import wait_until
from tests.support.noderecords import node_record, put_node, tracking


@pytest_asyncio.fixture
async def fleet(nc: NATS, prefix: str) -> AsyncIterator[NodeTracker]:
    subjects = Subjects(prefix)
    await ensure_topology(nc.jetstream(), subjects, TopologySettings(pools=["cpu"]))
    async with tracking(nc.jetstream(), subjects) as tracker:
        yield tracker


async def make_service(
    nc: NATS, prefix: str, db: asyncpg.Pool, keys: bool, fleet: NodeTracker
) -> ApiService:
    subjects = Subjects(prefix)
    await put_node(nc.jetstream(), subjects, node_record("n1"), seen_by=fleet)
    svc = ApiService(nc, subjects, ApiSettings(pools=["cpu"], require_api_keys=keys), fleet, db)
    await svc.start()
    return svc


async def call(
    nc: NATS, prefix: str, verb: str, body: Any, key: str | None = None
) -> tuple[dict[str, Any], str]:
    headers = None if key is None else {tenants.KEY_HEADER: key}
    msg = await nc.request(
        f"{prefix}.api.{verb}", msgspec.json.encode(body), timeout=5, headers=headers
    )
    code = (msg.headers or {}).get("Nats-Service-Error-Code", "ok")
    return msgspec.json.decode(msg.data), code


async def test_get_list_events_cancel(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> None:
    svc = await make_service(nc, prefix, db, keys=False, fleet=fleet)
    try:
        for i in range(5):
            _, code = await call(nc, prefix, "job.submit", {"v": 1, "job": job(f"j{i}")})
            assert code == "ok"
        got, code = await call(nc, prefix, "job.get", {"v": 1, "job_id": "j3"})
        assert code == "ok" and got["state"] == "submitted" and got["pool"] == "cpu"
        _, code = await call(nc, prefix, "job.get", {"v": 1, "job_id": "nope"})
        assert code == "404"

        seen: list[str] = []
        cursor = None
        for _ in range(5):  # bounded paging
            page, _ = await call(
                nc, prefix, "job.list", {"v": 1, "limit": 2, "cursor": cursor, "state": "submitted"}
            )
            seen += [j["job_id"] for j in page["jobs"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == [f"j{i}" for i in range(5)] and len(seen) == 5
        _, code = await call(nc, prefix, "job.list", {"v": 1, "cursor": "%%%"})
        assert code == "400"

        await db.execute(
            "INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, attempt, ts, body)"
            " SELECT 'e1', tenant, 'j3', 'started', 'n1', 1, now(), '{\"x\": 1}' FROM jobs"
            " WHERE job_id = 'j3'"
        )
        events, _ = await call(nc, prefix, "job.events", {"v": 1, "job_id": "j3"})
        assert [(e["event_id"], e["body"]) for e in events["events"]] == [("e1", {"x": 1})]

        ack, _ = await call(nc, prefix, "job.cancel", {"v": 1, "job_id": "j1"})
        assert ack["ok"] is True
        got, _ = await call(nc, prefix, "job.get", {"v": 1, "job_id": "j1"})
        assert got["state"] == "cancelled"
        err, code = await call(nc, prefix, "job.retry", {"v": 1, "job_id": "j2"})
        assert code == "404" and "no dead letter" in err["message"]
        summary, _ = await call(nc, prefix, "fleet.summary", {})
        assert summary["jobs_by_state"] == {"submitted": 4, "cancelled": 1}
        assert summary["pools"][0]["queued"] == 4
    finally:
        await svc.stop()


async def test_api_keys_and_queued_limit(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> None:
    await tenants.create_tenant(db, "acme", max_queued=2)
    key = await tenants.create_key(db, "acme")
    assert key not in str(await db.fetch("SELECT * FROM api_keys"))  # only the hash is kept
    svc = await make_service(nc, prefix, db, keys=True, fleet=fleet)
    try:
        body = {"v": 1, "job": job("k0", tenant="acme")}
        _, code = await call(nc, prefix, "job.submit", body)
        assert code == "401"
        _, code = await call(nc, prefix, "job.submit", body, key="flk_wrong")
        assert code == "401"
        _, code = await call(nc, prefix, "node.list", {})
        assert code == "401"
        _, code = await call(nc, prefix, "job.submit", {"v": 1, "job": job("k9")}, key=key)
        assert code == "403"  # the key's tenant is acme, the job says default
        codes = []
        for i in range(3):
            body = {"v": 1, "job": job(f"k{i}", tenant="acme")}
            codes.append((await call(nc, prefix, "job.submit", body, key=key))[1])
        assert codes == ["ok", "ok", "429"]
        listed, code = await call(nc, prefix, "node.list", {}, key=key)
        assert code == "ok" and len(listed["nodes"]) == 1
    finally:
        await svc.stop()


async def test_a_request_stuck_on_a_lock_does_not_hold_up_the_next(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> None:
    """Requests of one verb are answered concurrently: a submit that waits for its tenant's
    rate bucket (locked here by another transaction) does not delay another tenant's submit."""
    svc = await make_service(nc, prefix, db, keys=False, fleet=fleet)
    try:
        _, code = await call(nc, prefix, "job.submit", {"v": 1, "job": job("s-0", tenant="slow")})
        assert code == "ok"  # the slow tenant's bucket row exists now
        async with db.acquire() as locker, locker.transaction():
            await locker.execute("SELECT 1 FROM tenant_buckets WHERE tenant = 'slow' FOR UPDATE")
            stuck = asyncio.create_task(
                call(nc, prefix, "job.submit", {"v": 1, "job": job("s-1", tenant="slow")})
            )
            await wait_until(lambda: _waiting_on_a_lock(db), "the slow submit to block")
            _, code = await call(nc, prefix, "job.submit", {"v": 1, "job": job("f-1")})
            assert code == "ok" and not stuck.done()
        _, code = await stuck  # the lock is gone: it goes through
        assert code == "ok"
    finally:
        await svc.stop()


async def _waiting_on_a_lock(db: asyncpg.Pool) -> bool:
    n = await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE wait_event_type = 'Lock' AND datname = current_database()"
    )
    return bool(n)


class _CountingPool:
    """The real pool, counting the statements sent through it."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool, self.sent = pool, 0

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.pool, name)
        if name not in ("fetch", "fetchrow", "fetchval", "execute"):
            return found

        async def counted(*args: Any, **kw: Any) -> Any:
            self.sent += 1
            return await found(*args, **kw)

        return counted


async def test_a_get_reads_the_job_once_and_answers_as_before(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> None:
    await tenants.create_tenant(db, "acme")
    await tenants.create_tenant(db, "bravo")
    key = await tenants.create_key(db, "acme")
    svc = await make_service(nc, prefix, db, keys=False, fleet=fleet)
    try:
        for tenant, job_id in (("acme", "same"), ("bravo", "same"), ("acme", "solo")):
            _, code = await call(
                nc, prefix, "job.submit", {"v": 1, "job": job(job_id, tenant=tenant)}
            )
            assert code == "ok"
    finally:
        await svc.stop()
    counting = _CountingPool(db)
    subjects = Subjects(prefix)
    svc = ApiService(nc, subjects, ApiSettings(pools=["cpu"], require_api_keys=False), fleet,
                     counting)  # type: ignore[arg-type]  # fmt: skip
    await svc.start()
    try:

        async def get(body: dict[str, Any], key: str | None = None) -> tuple[Any, str, int]:
            before = counting.sent
            got, code = await call(nc, prefix, "job.get", {"v": 1, **body}, key=key)
            return got, code, counting.sent - before

        got, code, sent = await get({"job_id": "solo"})
        assert (code, got["tenant"], sent) == ("ok", "acme", 1)
        got, code, sent = await get({"job_id": "same", "tenant": "bravo"})
        assert (code, got["tenant"], sent) == ("ok", "bravo", 1)
        err, code, _ = await get({"job_id": "same"})
        assert code == "409" and "used by tenants acme, bravo" in err["message"]
        _, code, _ = await get({"job_id": "nope"})
        assert code == "404"
    finally:
        await svc.stop()
    # A tenant key: its own job in one read after the key's; another tenant's reads as unknown.
    svc = ApiService(nc, subjects, ApiSettings(pools=["cpu"], require_api_keys=True), fleet,
                     counting)  # type: ignore[arg-type]  # fmt: skip
    await svc.start()
    try:
        await get({"job_id": "solo"}, key=key)  # the key's first use also marks it used
        got, code, sent = await get({"job_id": "same"}, key=key)
        assert (code, got["tenant"], sent) == ("ok", "acme", 2)
        err, code, _ = await get({"job_id": "same", "tenant": "bravo"}, key=key)
        assert code == "404" and err["message"] == "no job 'same'"
    finally:
        await svc.stop()
