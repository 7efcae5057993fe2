"""API key and tenant administration over real NATS and Postgres: create, list, rotate, revoke,
expire; the key shown once; admin for operators only; one submit rate across instances."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio
from nats.aio.client import Client as NATS

from control.api import keys, tenants
from control.api.service import ApiService, ApiSettings
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas.subjects import Subjects
from tests.support.api import call, code, job
from tests.support.noderecords import node_record, put_node, tracking

WAIT_S = 60.0


@dataclass
class Admin:
    nc: NATS
    prefix: str
    db: asyncpg.Pool
    subjects: Subjects
    fleet: NodeTracker
    operator: str
    #: The instance the fixture started.
    first: ApiService | None = None

    async def ask(self, verb: str, body: Any, key: str | None) -> tuple[dict[str, Any], str]:
        reply, headers = await call(self.nc, self.prefix, verb, body, key)
        return reply, code(headers)

    async def new_key(self, tenant: str, **extra: Any) -> dict[str, Any]:
        created, status = await self.ask(
            "key.create", {"v": 1, "tenant": tenant, **extra}, self.operator
        )
        assert status == "ok", created
        return created

    def service(self) -> ApiService:
        settings = ApiSettings(pools=["cpu"], require_api_keys=True)
        return ApiService(self.nc, self.subjects, settings, self.fleet, self.db)


@pytest_asyncio.fixture
async def admin(nc: NATS, prefix: str, db: asyncpg.Pool) -> AsyncIterator[Admin]:
    """Keys required, one online node, tenant acme, and an operator key (as bootstrap makes)."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    await tenants.create_tenant(db, "ops")
    await tenants.create_tenant(db, "acme")
    operator, _ = await keys.insert_key(db, "ops", role="operator", name="bootstrap")
    async with tracking(js, subjects) as fleet:
        await put_node(js, subjects, node_record("n1"), seen_by=fleet)
        a = Admin(nc, prefix, db, subjects, fleet, operator)
        a.first = a.service()
        await a.first.start()
        try:
            yield a
        finally:
            await a.first.stop()


async def until_refused(a: Admin, key: str) -> None:
    """Until the key gets 401 (bounded: only a failure waits the whole bound)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if (await a.ask("job.list", {"v": 1}, key))[1] == "401":
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"the key still works after {WAIT_S}s")


async def test_key_is_shown_once_and_never_listed(admin: Admin) -> None:
    created = await admin.new_key("acme", name="ci")
    key, info = created["key"], created["info"]
    assert key.startswith("flk_") and len(key) > 40
    assert (info["tenant"], info["role"], info["name"], info["state"]) == (
        "acme", "tenant", "ci", "active",
    )  # fmt: skip
    _, status = await admin.ask("job.list", {"v": 1}, key)
    assert status == "ok"  # it works
    listed, status = await admin.ask("key.list", {"v": 1, "tenant": "acme"}, admin.operator)
    assert status == "ok" and [k["key_id"] for k in listed["keys"]] == [info["key_id"]]
    stored = await admin.db.fetchval(
        "SELECT key_hash FROM api_keys WHERE key_id = $1", info["key_id"]
    )
    text = json.dumps(listed)
    assert key not in text and stored not in text and "hash" not in text
    assert listed["keys"][0]["last_used_at"] is not None  # recorded, lazily
    everything = await admin.db.fetch("SELECT * FROM api_keys")
    assert key not in str(everything)  # only the hash is at rest
    listed, _ = await admin.ask("key.list", {"v": 1}, admin.operator)
    assert {k["tenant"] for k in listed["keys"]} == {"acme", "ops"}


async def test_expired_key_is_refused(admin: Admin) -> None:
    created = await admin.new_key("acme", expires_in_s=1.0)
    assert created["info"]["expires_at"] is not None
    await until_refused(admin, created["key"])
    listed, _ = await admin.ask("key.list", {"v": 1, "tenant": "acme"}, admin.operator)
    assert listed["keys"][0]["state"] == "expired"
    err, status = await admin.ask(
        "key.rotate", {"v": 1, "key_id": created["info"]["key_id"]}, admin.operator
    )
    assert status == "404" and "expired" in err["message"]  # an expired key cannot be renewed


async def test_revoked_key_is_refused(admin: Admin) -> None:
    created = await admin.new_key("acme")
    key_id = created["info"]["key_id"]
    ack, status = await admin.ask("key.revoke", {"v": 1, "key_id": key_id}, admin.operator)
    assert status == "ok" and ack["message"] == f"{key_id} revoked"
    _, status = await admin.ask("job.list", {"v": 1}, created["key"])
    assert status == "401"
    ack, _ = await admin.ask("key.revoke", {"v": 1, "key_id": key_id}, admin.operator)
    assert ack["message"] == f"{key_id} already revoked"
    listed, _ = await admin.ask("key.list", {"v": 1, "tenant": "acme"}, admin.operator)
    assert listed["keys"][0]["state"] == "revoked" and listed["keys"][0]["revoked_at"]
    _, status = await admin.ask("key.revoke", {"v": 1, "key_id": "k_000000000000"}, admin.operator)
    assert status == "404"


async def test_rotated_key_works_through_the_grace_then_is_refused(admin: Admin) -> None:
    old = await admin.new_key("acme", name="pipeline")
    old_id = old["info"]["key_id"]
    rotated, status = await admin.ask(
        "key.rotate", {"v": 1, "key_id": old_id, "grace_s": 3600}, admin.operator
    )
    assert status == "ok"
    new = rotated["info"]
    assert (new["rotated_from"], new["tenant"], new["name"]) == (old_id, "acme", "pipeline")
    assert rotated["key"] != old["key"] and rotated["old_key_expires_at"] > time.time() + 3000
    for key in (old["key"], rotated["key"]):  # inside the grace both work
        assert (await admin.ask("job.list", {"v": 1}, key))[1] == "ok"

    again, status = await admin.ask(
        "key.rotate", {"v": 1, "key_id": new["key_id"], "grace_s": 0}, admin.operator
    )
    assert status == "ok"
    _, status = await admin.ask("job.list", {"v": 1}, rotated["key"])
    assert status == "401"  # no grace: refused at once
    assert (await admin.ask("job.list", {"v": 1}, again["key"]))[1] == "ok"

    # A grace that has run out: the first key, once its grace ends.
    await admin.ask("key.rotate", {"v": 1, "key_id": old_id, "grace_s": 1}, admin.operator)
    await until_refused(admin, old["key"])


async def test_operator_keys_act_fleet_wide_and_tenant_keys_cannot_administer(
    admin: Admin,
) -> None:
    tenant_key = (await admin.new_key("acme"))["key"]
    for verb, body in (
        ("key.create", {"v": 1, "tenant": "acme", "role": "operator"}),
        ("key.list", {"v": 1}),
        ("key.rotate", {"v": 1, "key_id": "k_000000000000"}),
        ("key.revoke", {"v": 1, "key_id": "k_000000000000"}),
        ("tenant.create", {"v": 1, "tenant": "evil"}),
        ("tenant.list", {}),
    ):
        err, status = await admin.ask(verb, body, tenant_key)
        assert status == "403" and "operator key" in err["message"], verb
    assert await admin.db.fetchval("SELECT count(*) FROM api_keys WHERE role = 'operator'") == 1
    assert await admin.db.fetchval("SELECT count(*) FROM tenants WHERE tenant = 'evil'") == 0

    second = await admin.new_key("acme", role="operator")
    assert second["info"]["role"] == "operator"
    body = {"v": 1, "job": job("op-1", tenant="somebody")}
    _, status = await admin.ask("job.submit", body, second["key"])
    assert status == "ok"  # an operator submits for any tenant


async def test_tenants_are_created_once_and_listed(admin: Admin) -> None:
    created, status = await admin.ask(
        "tenant.create", {"v": 1, "tenant": "zeta", "max_queued": 5}, admin.operator
    )
    assert status == "ok" and len(created["webhook_secret"]) == 64
    assert created["info"]["max_queued"] == 5
    err, status = await admin.ask("tenant.create", {"v": 1, "tenant": "zeta"}, admin.operator)
    assert status == "409" and "exists" in err["message"]
    secret = await admin.db.fetchval("SELECT webhook_secret FROM tenants WHERE tenant = 'zeta'")
    assert secret == created["webhook_secret"]  # a second create does not replace it
    listed, _ = await admin.ask("tenant.list", {}, admin.operator)
    by_name = {t["tenant"]: t for t in listed["tenants"]}
    assert set(by_name) == {"acme", "ops", "zeta"} and by_name["ops"]["active_keys"] == 1
    assert "webhook_secret" not in json.dumps(listed)
    err, status = await admin.ask("key.create", {"v": 1, "tenant": "nobody"}, admin.operator)
    assert status == "404" and "tenants create" in err["message"]


async def test_bad_admin_input_names_the_field(admin: Admin) -> None:
    cases = [
        ("key.create", {"v": 1, "tenant": "acme", "expires_in_s": -5}, "expires_in_s"),
        ("key.create", {"v": 1, "tenant": "a b"}, "tenant"),
        ("key.create", {"v": 1, "tenant": "acme", "role": "root"}, "role"),
        ("key.create", {"v": 1, "tenant": "acme", "colour": "red"}, "colour"),
        ("key.rotate", {"v": 1, "key_id": "nope"}, "key_id"),
        ("key.rotate", {"v": 1, "key_id": "k_000000000000", "grace_s": -1}, "grace_s"),
        ("key.revoke", {"v": 1}, "key_id"),
        ("tenant.create", {"v": 1, "tenant": "t", "submit_rate": 0}, "submit_rate"),
    ]
    for verb, body, field in cases:
        err, status = await admin.ask(verb, body, admin.operator)
        assert status == "400" and field in err["message"], (verb, err)


async def test_two_instances_share_one_submit_rate(admin: Admin) -> None:
    """Burst 3, next to no refill: the first instance takes the bucket's three tokens; a second
    instance, with nothing in its own memory, still refuses the fourth."""
    await admin.db.execute(
        "UPDATE tenants SET submit_rate = 0.0001, submit_burst = 3 WHERE tenant = 'acme'"
    )
    key = (await admin.new_key("acme"))["key"]
    for i in range(3):
        body = {"v": 1, "job": job(f"r-{i}", tenant="acme")}
        assert (await admin.ask("job.submit", body, key))[1] == "ok"
    second = admin.service()
    await second.start()
    try:
        assert admin.first is not None
        await admin.first.stop()  # from here on only the second instance answers
        err, status = await admin.ask("job.submit", {"v": 1, "job": job("r-3", tenant="acme")}, key)
        assert status == "429" and "rate" in err["message"]
        body = {"v": 1, "job": job("r-4", tenant="ops")}  # another tenant's bucket is its own
        assert (await admin.ask("job.submit", body, admin.operator))[1] == "ok"
    finally:
        await second.stop()
