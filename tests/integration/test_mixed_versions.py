"""A fleet in the middle of a rolling upgrade, over real NATS and Postgres: a newer node's
record does not break the API for anyone, and an older node gets commands it can read."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from common.natsconn import sync_subscriptions
from control.api.service import ApiService, ApiSettings
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas.codec import encode
from schemas.subjects import Subjects
from tests.support.api import call, code, job
from tests.support.noderecords import node_record, put_node, tracking


@pytest_asyncio.fixture
async def api(nc: NATS, prefix: str, db: asyncpg.Pool) -> AsyncIterator[NodeTracker]:
    subjects = Subjects(prefix)
    await ensure_topology(nc.jetstream(), subjects, TopologySettings(pools=["cpu"]))
    async with tracking(nc.jetstream(), subjects) as fleet:
        svc = ApiService(nc, subjects, ApiSettings(pools=["cpu"]), fleet, db)
        await svc.start()
        try:
            yield fleet
        finally:
            await svc.stop()


async def test_a_newer_nodes_record_does_not_break_the_fleet_api(
    nc: NATS, prefix: str, api: NodeTracker
) -> None:
    subjects, js = Subjects(prefix), nc.jetstream()
    await put_node(js, subjects, node_record("n-now"), seen_by=api)
    newer = json.loads(encode(node_record("n-next")))
    newer["capabilities"]["protocol"] = 99
    newer["capabilities"]["av1_film_grain"] = True  # fields of a release not written yet
    newer["heartbeat"]["thermal_budget"] = {"gpu0": 0.4}
    kv = await js.key_value(subjects.nodes_bucket)
    assert await api.wait_revision(await kv.put("n-next", json.dumps(newer).encode()), 10.0)
    listed, headers = await call(nc, prefix, "node.list", {})
    assert code(headers) == "ok", listed
    assert sorted(n["node_id"] for n in listed["nodes"]) == ["n-next", "n-now"]
    reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("mixed-1")})
    assert code(headers) == "ok" and reply["duplicate"] is False, reply


async def test_an_older_node_gets_commands_without_the_tenant(
    nc: NATS, prefix: str, api: NodeTracker
) -> None:
    """A node of protocol 1 refuses unknown fields, `tenant` included: the API leaves it out
    for that node, and names it to a current node."""
    subjects, js = Subjects(prefix), nc.jetstream()
    old = node_record("n-old", running=["run-1"])
    old = msgspec.structs.replace(
        old, capabilities=msgspec.structs.replace(old.capabilities, protocol=1)
    )
    now = node_record("n-now", running=["run-2"])
    now = msgspec.structs.replace(
        now, heartbeat=msgspec.structs.replace(now.heartbeat, running_tenants=["acme"])
    )
    for rec in (old, now):
        await put_node(js, subjects, rec, seen_by=api)
    heard: dict[str, dict[str, Any]] = {}

    async def node(msg: Msg) -> None:
        heard[msg.subject.split(".")[-2]] = json.loads(msg.data)
        if msg.reply:  # the broadcast to every node (`all`) asks for no answer
            await msg.respond(b'{"v":1,"ok":true,"node_id":"x","message":"cancelled"}')

    sub = await nc.subscribe(f"{prefix}.ctl.*.cancel", cb=node)
    await sync_subscriptions(nc)
    try:
        for job_id in ("run-1", "run-2"):
            body = {"v": 1, "job_id": job_id, "tenant": "acme", "reason": "r"}
            ack, headers = await call(nc, prefix, "job.cancel", body)
            assert code(headers) == "ok" and ack["ok"] is True, ack
    finally:
        await sub.unsubscribe()
    assert "tenant" not in heard["n-old"] and heard["n-old"]["job_id"] == "run-1"
    assert heard["n-now"]["tenant"] == "acme" and heard["n-now"]["job_id"] == "run-2"
    assert heard["all"]["tenant"] == "acme"  # the broadcast names it: no other tenant's job stops
