"""The workflow verbs' tenancy and the leader's reconcile over real NATS and Postgres: a tenant
key acts on its own tenant's workflows only; a reconcile run again publishes nothing twice, a
publish whose mark was lost (a crash before the commit) is deduplicated by the stream, and a
tenant over its submit rate has its steps wait rather than skip the limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest_asyncio
from nats.aio.client import Client as NATS

from control.api import tenants
from control.api.publish import Limits
from control.api.service import ApiService, ApiSettings
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from control.workflows.advance import Advancer
from schemas.subjects import Subjects
from tests.support.api import call, code
from tests.support.noderecords import node_record, put_node, tracking


@dataclass
class World:
    nc: NATS
    prefix: str
    db: asyncpg.Pool
    subjects: Subjects
    acme: str
    bravo: str
    operator: str

    async def ask(self, verb: str, body: Any, key: str | None) -> tuple[dict[str, Any], str]:
        reply, headers = await call(self.nc, self.prefix, verb, body, key)
        return reply, code(headers)


@pytest_asyncio.fixture
async def world(nc: NATS, prefix: str, db: asyncpg.Pool) -> AsyncIterator[World]:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    for tenant in ("acme", "bravo", "ops"):
        await tenants.create_tenant(db, tenant)
    fleet: NodeTracker
    async with tracking(js, subjects) as fleet:
        await put_node(js, subjects, node_record("n1"), seen_by=fleet)
        svc = ApiService(nc, subjects, ApiSettings(pools=["cpu"], require_api_keys=True), fleet, db)
        await svc.start()
        try:
            yield World(
                nc, prefix, db, subjects,
                acme=await tenants.create_key(db, "acme"),
                bravo=await tenants.create_key(db, "bravo"),
                operator=await tenants.create_key(db, "ops", role="operator"),
            )  # fmt: skip
        finally:
            await svc.stop()


def workflow(workflow_id: str, tenant: str = "acme") -> dict[str, Any]:
    tc = {"op": "transcode", "codec": "h264"}
    return {
        "v": 1,
        "workflow": {
            "workflow_id": workflow_id,
            "tenant": tenant,
            "steps": [
                {"name": "a", "operation": tc, "input": "file:///in.mp4",
                 "output": "file:///out/a.mp4"},
                {"name": "b", "operation": tc, "input": "file:///in.mp4",
                 "output": "file:///out/b.mp4"},
                {"name": "c", "needs": ["a"], "operation": tc, "input": "step:a",
                 "output": "file:///out/c.mp4"},
            ],
        },
    }  # fmt: skip


async def test_a_tenant_key_acts_on_its_own_workflows_only(world: World) -> None:
    w = world
    reply, status = await w.ask("workflow.submit", workflow("wf-1"), w.acme)
    assert status == "ok" and reply["duplicate"] is False, reply
    # Submitting for another tenant: refused as a job submit is.
    reply, status = await w.ask("workflow.submit", workflow("wf-2", tenant="acme"), w.bravo)
    assert status == "403" and "belongs to tenant 'bravo'" in reply["message"], reply
    # Another tenant's workflow answers exactly as one nobody has.
    for verb in ("workflow.get", "workflow.cancel"):
        theirs, s1 = await w.ask(verb, {"v": 1, "workflow_id": "wf-1"}, w.bravo)
        unknown, s2 = await w.ask(verb, {"v": 1, "workflow_id": "wf-0"}, w.bravo)
        assert (s1, s2) == ("404", "404")
        assert theirs["message"].replace("wf-1", "wf-0") == unknown["message"]
    listed, _ = await w.ask("workflow.list", {"v": 1}, w.bravo)
    assert listed["workflows"] == []
    listed, _ = await w.ask("workflow.list", {"v": 1}, w.acme)
    assert [x["workflow_id"] for x in listed["workflows"]] == ["wf-1"]
    info, status = await w.ask("workflow.get", {"v": 1, "workflow_id": "wf-1"}, w.operator)
    assert status == "ok" and [s["state"] for s in info["steps"]] == ["waiting"] * 3
    assert info["steps"][2]["input"] == "file:///out/a.mp4"
    # A plain job already under a step's id: the workflow would adopt it, so it is refused.
    job = {"v": 1, "job": {"v": 1, "job_id": "wf-3--b", "tenant": "acme", "input": "file:///x",
                           "output": "file:///y.mp4", "operation": {"op": "probe"}}}  # fmt: skip
    _, status = await w.ask("job.submit", job, w.acme)
    assert status == "ok"
    reply, status = await w.ask("workflow.submit", workflow("wf-3"), w.acme)
    assert status == "409" and "wf-3--b already exist" in reply["message"], reply
    _, status = await w.ask("workflow.get", {"v": 1, "workflow_id": "wf-3"}, w.acme)
    assert status == "404"  # nothing of it was kept


async def stored(w: World, job_id: str) -> int:
    """Messages the jobs stream holds for the acme job `job_id`."""
    info = await w.nc.jetstream().stream_info(
        w.subjects.jobs_stream, subjects_filter=f"{w.prefix}.jobs.>"
    )
    return sum(n for s, n in (info.state.subjects or {}).items() if s.endswith(f".acme.{job_id}"))


async def steps(w: World, workflow_id: str) -> dict[str, str]:
    rows = await w.db.fetch(
        "SELECT name, state FROM workflow_steps WHERE workflow_id = $1", workflow_id
    )
    return {r["name"]: r["state"] for r in rows}


async def test_a_reconcile_repeats_nothing_and_a_lost_mark_is_deduplicated(world: World) -> None:
    w = world
    _, status = await w.ask("workflow.submit", workflow("wf-r"), w.acme)
    assert status == "ok"
    adv = Advancer(w.nc, w.db, w.subjects, 60.0, Limits(50.0, 100))
    plan = await adv.reconcile("acme", "wf-r")
    assert plan is not None and plan.submit == ["a", "b"]
    assert await steps(w, "wf-r") == {"a": "submitted", "b": "submitted", "c": "waiting"}
    assert adv.stats.published == 2
    # Again (a second trigger, a sweep, a new leader): nothing more is published.
    plan = await adv.reconcile("acme", "wf-r")
    assert plan is not None and plan.submit == [] and adv.stats.published == 2
    # A leader that published `a` and died before its commit: no mark, no job row. The next
    # reconcile publishes again under the same message id, and the stream keeps one copy.
    await w.db.execute("UPDATE workflow_steps SET state = 'waiting' WHERE name = 'a'")
    await w.db.execute("DELETE FROM jobs WHERE job_id = 'wf-r--a'")
    plan = await adv.reconcile("acme", "wf-r")
    assert plan is not None and plan.submit == ["a"]
    assert await stored(w, "wf-r--a") == 1 and await stored(w, "wf-r--b") == 1
    assert await stored(w, "wf-r--c") == 0
    # A mark lost after ingest recorded the job: adopted, not published again.
    await w.db.execute("UPDATE workflow_steps SET state = 'waiting' WHERE name = 'b'")
    plan = await adv.reconcile("acme", "wf-r")
    assert plan is not None and plan.submit == [] and adv.stats.published == 3
    assert (await steps(w, "wf-r"))["b"] == "submitted"


async def test_steps_wait_while_their_tenant_is_over_its_submit_rate(world: World) -> None:
    w = world
    _, status = await w.ask("workflow.submit", workflow("wf-l"), w.acme)
    assert status == "ok"
    await w.db.execute(
        "UPDATE tenants SET submit_rate = 0.001, submit_burst = 1 WHERE tenant = 'acme'"
    )
    await w.db.execute("DELETE FROM tenant_buckets WHERE tenant = 'acme'")
    seen: list[tuple[str, str]] = []
    adv = Advancer(w.nc, w.db, w.subjects, 60.0, Limits(50.0, 100),
                   lambda kind, outcome: seen.append((kind, outcome)))  # fmt: skip
    await adv.reconcile("acme", "wf-l")
    assert adv.stats.published == 1 and adv.stats.deferred == 1
    assert sorted(seen) == [("step", "deferred"), ("step", "published")]  # what metrics count
    assert sorted((await steps(w, "wf-l")).values()) == ["submitted", "waiting", "waiting"]
