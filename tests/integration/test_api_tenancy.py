"""Tenant isolation in the fleet API, from the attacker's side: tenant bravo's key against
tenant acme's job, over real NATS and Postgres. Every refusal must look exactly like the answer
for a job id nobody has, so that bravo cannot even learn that acme's job exists."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from control.api import tenants
from control.api.service import ApiService, ApiSettings
from control.deadletters.retry import H_POOL, H_PRIORITY
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas.codec import encode
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects
from tests.support.api import call, code, job
from tests.support.noderecords import node_record, put_node, tracking

#: A job id of the same length as acme's, which nobody has.
UNKNOWN = "zz-9"
THEIRS = "a-01"


@dataclass
class World:
    nc: NATS
    prefix: str
    db: asyncpg.Pool
    subjects: Subjects
    fleet: NodeTracker
    acme: str
    bravo: str
    operator: str

    async def ask(self, verb: str, body: Any, key: str | None) -> tuple[dict[str, Any], str]:
        reply, headers = await call(self.nc, self.prefix, verb, body, key)
        return reply, code(headers)


@pytest_asyncio.fixture
async def world(nc: NATS, prefix: str, db: asyncpg.Pool) -> AsyncIterator[World]:
    """Keys required; tenants acme and bravo with a key each, an operator key, one online node,
    and acme's queued job THEIRS."""
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    for tenant in ("acme", "bravo", "ops"):
        await tenants.create_tenant(db, tenant)
    async with tracking(js, subjects) as fleet:
        await put_node(js, subjects, node_record("n1"), seen_by=fleet)
        settings = ApiSettings(pools=["cpu"], require_api_keys=True)
        svc = ApiService(nc, subjects, settings, fleet, db)
        await svc.start()
        try:
            w = World(
                nc, prefix, db, subjects, fleet,
                acme=await tenants.create_key(db, "acme"),
                bravo=await tenants.create_key(db, "bravo"),
                operator=await tenants.create_key(db, "ops", role="operator"),
            )  # fmt: skip
            _, status = await w.ask(
                "job.submit", {"v": 1, "job": job(THEIRS, tenant="acme")}, w.acme
            )
            assert status == "ok"
            yield w
        finally:
            await svc.stop()


async def refused_like_unknown(w: World, verb: str, body: Callable[[str], dict[str, Any]]) -> None:
    """Bravo asking about acme's job gets what it gets for an id nobody has, byte for byte (the
    id aside): code, message and headers."""
    theirs, h_theirs = await call(w.nc, w.prefix, verb, body(THEIRS), w.bravo)
    unknown, h_unknown = await call(w.nc, w.prefix, verb, body(UNKNOWN), w.bravo)
    assert code(h_theirs) == "404", theirs

    def same_id(value: object) -> object:
        return json.loads(json.dumps(value).replace(UNKNOWN, THEIRS))

    assert theirs == same_id(unknown)
    assert h_theirs == same_id(h_unknown)


def ref(job_id: str) -> dict[str, Any]:
    return {"v": 1, "job_id": job_id}


async def test_tenant_cannot_get_another_tenants_job(world: World) -> None:
    await refused_like_unknown(world, "job.get", ref)
    mine, status = await world.ask("job.get", ref(THEIRS), world.acme)
    assert status == "ok" and mine["tenant"] == "acme"  # it exists, and its owner sees it


async def test_tenant_cannot_list_another_tenants_jobs(world: World) -> None:
    w = world
    _, status = await w.ask("job.submit", {"v": 1, "job": job("b-01", tenant="bravo")}, w.bravo)
    assert status == "ok"
    listed, status = await w.ask("job.list", {"v": 1}, w.bravo)
    assert status == "ok" and [j["job_id"] for j in listed["jobs"]] == ["b-01"]
    # Asking for acme's jobs by name does not widen the key's view.
    listed, status = await w.ask("job.list", {"v": 1, "tenant": "acme"}, w.bravo)
    assert status == "ok" and listed["jobs"] == []
    listed, _ = await w.ask("job.list", {"v": 1, "state": "submitted"}, w.bravo)
    assert [j["job_id"] for j in listed["jobs"]] == ["b-01"]
    listed, _ = await w.ask("job.list", {"v": 1}, w.operator)
    assert sorted(j["job_id"] for j in listed["jobs"]) == [THEIRS, "b-01"]
    summary, _ = await w.ask("fleet.summary", {}, w.bravo)
    assert summary["jobs_by_state"] == {"submitted": 1}


async def test_tenant_cannot_read_another_tenants_events(world: World) -> None:
    await world.db.execute(
        "INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, attempt, ts, body)"
        " VALUES ('e1', 'acme', $1, 'started', 'n1', 1, now(), '{\"x\": 1}')",
        THEIRS,
    )
    await refused_like_unknown(world, "job.events", ref)
    events, status = await world.ask("job.events", ref(THEIRS), world.acme)
    assert status == "ok" and [e["event_id"] for e in events["events"]] == ["e1"]


async def test_tenant_cannot_cancel_another_tenants_job(world: World) -> None:
    w = world
    stored = w.subjects.job_stored("acme", "cpu", "normal", THEIRS)
    js = w.nc.jetstream()

    def cancel(job_id: str) -> dict[str, Any]:
        return {"v": 1, "job_id": job_id, "reason": "mine now"}

    await refused_like_unknown(w, "job.cancel", cancel)
    assert (await js.get_last_msg(w.subjects.jobs_stream, stored)).data  # still queued
    info, _ = await w.ask("job.get", ref(THEIRS), w.acme)
    assert info["state"] == "submitted"
    ack, status = await w.ask("job.cancel", cancel(THEIRS), w.acme)
    assert status == "ok" and ack["ok"] is True
    try:
        await js.get_last_msg(w.subjects.jobs_stream, stored)
        raise AssertionError("the owner's cancel left the job queued")
    except NotFoundError:
        pass


async def test_tenant_cannot_retry_another_tenants_dead_letter(world: World) -> None:
    w = world
    js = w.nc.jetstream()
    spec = JOB_DECODER.decode(msgspec.json.encode(job(THEIRS, tenant="acme")))
    await js.publish(
        w.subjects.dead_letter("acme", THEIRS),
        encode(spec),
        headers={H_POOL: "cpu", H_PRIORITY: "normal"},
    )
    before = (await js.stream_info(w.subjects.jobs_stream)).state.last_seq
    await refused_like_unknown(w, "job.retry", ref)
    assert (await js.stream_info(w.subjects.jobs_stream)).state.last_seq == before
    reply, status = await w.ask("job.retry", ref(THEIRS), w.operator)
    assert status == "ok" and reply["seq"] > before


async def test_tenant_cannot_drain_or_resume_nodes(world: World) -> None:
    w = world
    asked: list[str] = []

    async def on_command(msg: Any) -> None:
        asked.append(msg.subject)
        verb = msg.subject.rsplit(".", 1)[-1]
        state = "draining" if verb == "drain" else "online"
        await msg.respond(b'{"v":1,"ok":true,"node_id":"n1","state":"%s"}' % state.encode())

    sub = await w.nc.subscribe(w.subjects.ctl("n1", "*"), cb=on_command)
    try:
        for verb in ("drain", "resume"):
            err, status = await w.ask(f"node.{verb}", {"v": 1, "node_id": "n1"}, w.bravo)
            assert status == "403" and "operator key" in err["message"]
        await w.nc.flush()
        assert asked == []  # the node never heard of it
        for verb in ("drain", "resume"):
            ack, status = await w.ask(f"node.{verb}", {"v": 1, "node_id": "n1"}, w.operator)
            assert status == "ok" and ack["ok"] is True
        assert [s.rsplit(".", 1)[-1] for s in asked] == ["drain", "resume"]
    finally:
        await sub.unsubscribe()


async def test_node_list_hides_other_tenants_running_jobs(world: World) -> None:
    w = world
    _, status = await w.ask("job.submit", {"v": 1, "job": job("b-01", tenant="bravo")}, w.bravo)
    assert status == "ok"
    busy = node_record("n2", running=[THEIRS, "b-01"])
    await put_node(w.nc.jetstream(), w.subjects, busy, seen_by=w.fleet)
    listed, status = await w.ask("node.list", {}, w.bravo)
    assert status == "ok"
    n2 = next(n for n in listed["nodes"] if n["node_id"] == "n2")
    assert n2["heartbeat"]["running_jobs"] == ["b-01"] and n2["running"] == 2
    assert THEIRS not in json.dumps(listed)
    listed, _ = await w.ask("node.list", {}, w.operator)
    n2 = next(n for n in listed["nodes"] if n["node_id"] == "n2")
    assert n2["heartbeat"]["running_jobs"] == [THEIRS, "b-01"]


async def test_summary_hides_fleet_alerts_from_tenants(world: World) -> None:
    await world.db.execute(
        "INSERT INTO alerts (alert_id, rule, severity, state, subject, summary, fired_at)"
        " VALUES ('al1', 'stuck_job', 'warning', 'firing', $1, 'no progress', now())",
        THEIRS,
    )
    summary, status = await world.ask("fleet.summary", {}, world.bravo)
    assert status == "ok" and summary["alerts_firing"] == [] and summary["jobs_by_state"] == {}
    summary, _ = await world.ask("fleet.summary", {}, world.operator)
    assert [a["alert_id"] for a in summary["alerts_firing"]] == ["al1"]
    assert summary["jobs_by_state"] == {"submitted": 1}


async def test_submit_for_another_tenant_needs_an_operator_key(world: World) -> None:
    w = world
    err, status = await w.ask("job.submit", {"v": 1, "job": job("x-01", tenant="acme")}, w.bravo)
    assert status == "403" and "bravo" in err["message"]
    _, status = await w.ask("job.get", ref("x-01"), w.operator)
    assert status == "404"  # nothing was stored
    _, status = await w.ask("job.submit", {"v": 1, "job": job("x-02", tenant="acme")}, w.operator)
    assert status == "ok"
    info, _ = await w.ask("job.get", ref("x-02"), w.acme)
    assert info["tenant"] == "acme"


async def test_a_job_id_used_by_one_tenant_is_free_for_another(world: World) -> None:
    w = world
    theirs = job(THEIRS, tenant="bravo")
    reply, status = await w.ask("job.submit", {"v": 1, "job": theirs}, w.bravo)
    # Its own message (the dedup id is per tenant), not a duplicate of acme's.
    assert status == "ok" and reply["duplicate"] is False
    js = w.nc.jetstream()
    for tenant in ("acme", "bravo"):
        stored = w.subjects.job_stored(tenant, "cpu", "normal", THEIRS)
        assert (await js.get_last_msg(w.subjects.jobs_stream, stored)).data
    for key, tenant in ((w.acme, "acme"), (w.bravo, "bravo")):
        info, _ = await w.ask("job.get", ref(THEIRS), key)
        assert info["tenant"] == tenant
        # Naming the other tenant does not reach its job: the answer for an unknown id.
        other = "bravo" if tenant == "acme" else "acme"
        _, status = await w.ask("job.get", {**ref(THEIRS), "tenant": other}, key)
        assert status == "404"
    # The operator names the tenant once two have the id.
    err, status = await w.ask("job.get", ref(THEIRS), w.operator)
    assert status == "409" and "acme, bravo" in err["message"]
    info, _ = await w.ask("job.get", {**ref(THEIRS), "tenant": "bravo"}, w.operator)
    assert info["tenant"] == "bravo"
    # Bravo cancels its own job; acme's stays queued.
    ack, status = await w.ask("job.cancel", {**ref(THEIRS), "reason": "mine"}, w.bravo)
    assert status == "ok" and ack["ok"] is True
    acme_stored = w.subjects.job_stored("acme", "cpu", "normal", THEIRS)
    assert (await js.get_last_msg(w.subjects.jobs_stream, acme_stored)).data
    states = {t: (await w.ask("job.get", ref(THEIRS), k))[0]["state"]
              for t, k in (("acme", w.acme), ("bravo", w.bravo))}  # fmt: skip
    assert states == {"acme": "submitted", "bravo": "cancelled"}


async def test_every_verb_needs_a_key_when_keys_are_required(world: World) -> None:
    bodies: dict[str, Any] = {
        "job.submit": {"v": 1, "job": job("k-01", tenant="acme")},
        "job.get": ref(THEIRS),
        "job.list": {"v": 1},
        "job.events": ref(THEIRS),
        "job.cancel": ref(THEIRS),
        "job.retry": ref(THEIRS),
        "node.list": {},
        "node.drain": {"v": 1, "node_id": "n1"},
        "node.resume": {"v": 1, "node_id": "n1"},
        "fleet.summary": {},
        "key.list": {"v": 1},
        "tenant.list": {},
    }
    for verb, body in bodies.items():
        for key in (None, "flk_not-a-key"):
            _, status = await world.ask(verb, body, key)
            assert status == "401", (verb, key)
    info, _ = await world.ask("job.get", ref(THEIRS), world.acme)
    assert info["state"] == "submitted"
