"""A job is named by (tenant, job_id): two tenants may use one job id, on one node at once.

Real nats-server, real ffmpeg, an in-process daemon. Jobs that must overlap read an http input
held back until the test releases it (support.heldmedia), so they run side by side for as long
as the test needs, with no timing involved.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import PubAck

from daemon.app import Daemon
from daemon.journal.rows import JobUpdate
from daemon.journal.store import Journal
from schemas.subjects import Subjects, job_msg_id
from tests.support.daemons import Event, config, events, job, kinds, until
from tests.support.heldmedia import CONNECT_TIMEOUT_S, HOST, READ_TIMEOUT_S, HeldMedia, held_media

TENANTS = ("acme", "bolt")
HELD_MEDIA = {
    "http_hosts": [HOST],
    "http_allow_private": True,
    "http_connect_timeout": CONNECT_TIMEOUT_S,
    "http_read_timeout": READ_TIMEOUT_S,
}


async def publish(
    js: JetStreamContext, prefix: str, tenant: str, spec: dict[str, Any], msg_id: str
) -> PubAck:
    subject = Subjects(prefix).submit(tenant, "cpu", "normal", spec["job_id"])
    body = json.dumps(spec | {"tenant": tenant}).encode()
    return await js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})


async def of_tenant(js: JetStreamContext, prefix: str, tenant: str, job_id: str) -> list[Event]:
    return [e for e in await events(js, prefix, job_id) if e["tenant"] == tenant]


async def ctl(nc: NATS, prefix: str, target: str, cmd: dict[str, Any]) -> dict[str, Any]:
    msg = {"v": 1, **cmd}
    reply = await nc.request(f"{prefix}.ctl.{target}.{cmd['verb']}", json.dumps(msg).encode(), 5)
    return dict(json.loads(reply.data))


async def hold_both(
    js: JetStreamContext, prefix: str, media: HeldMedia, job_id: str, clip: Path, out: Path
) -> None:
    """Each tenant submits `job_id` under its own Nats-Msg-Id; both are stored (neither is the
    other's duplicate) and both run, held, until released."""
    for tenant in TENANTS:
        spec = job(job_id, clip, out / tenant / f"{job_id}.mp4")
        spec["input"] = media.url(f"{tenant}.{job_id}")
        ack = await publish(js, prefix, tenant, spec, job_msg_id(tenant, job_id))
        assert not ack.duplicate

    async def both_held() -> bool:
        return media.holding == {f"{t}.{job_id}": 1 for t in TENANTS}

    await until(both_held)


async def test_two_tenants_run_the_same_job_id_on_one_node_at_once(
    js: JetStreamContext, nc: NATS, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    async with held_media(clip) as media:
        d: Daemon = await start_daemon(slots={"cpu": 2}, media=HELD_MEDIA)
        await hold_both(js, prefix, media, "same", clip, tmp_path)

        # Both run here now, each under its own name.
        assert d.running.keys() == [("acme", "same"), ("bolt", "same")]
        await d.advertiser.beat()
        hb = d.advertiser.last
        assert hb is not None and hb.running_jobs == ["same", "same"]
        assert hb.running_tenants == ["acme", "bolt"]
        status = await ctl(nc, prefix, "n1", {"verb": "status"})
        assert status["ok"] and status["running_jobs"] == ["same", "same"]
        scratch = sorted(p.name.rsplit(".", 2)[0] for p in d.cfg.work_dir.iterdir())
        assert scratch == ["acme.same", "bolt.same"]  # one scratch dir each, never shared

        media.release(f"{t}.same" for t in TENANTS)
        for tenant in TENANTS:

            async def done(tenant: str = tenant) -> bool:
                return "completed" in kinds(await of_tenant(js, prefix, tenant, "same"))

            await until(done)

    every = await events(js, prefix, "same")
    assert sorted(e["tenant"] for e in every if e["kind"] == "completed") == ["acme", "bolt"]
    assert all(e["tenant"] in TENANTS for e in every)  # every event names its job's tenant
    for tenant in TENANTS:
        own = await of_tenant(js, prefix, tenant, "same")
        assert kinds(own)[:2] == ["accepted", "started"] and kinds(own).count("completed") == 1
        [output] = [e["output"]["uri"] for e in own if e["kind"] == "output"]
        assert output == f"file://{tmp_path / tenant / 'same.mp4'}"
        assert (tmp_path / tenant / "same.mp4").stat().st_size > 0
        # No partial of either tenant's attempt is left beside its output.
        assert [p.name for p in (tmp_path / tenant).iterdir()] == ["same.mp4"]


async def test_cancel_names_the_tenant_when_two_run_the_id(
    js: JetStreamContext, nc: NATS, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    async with held_media(clip) as media:
        d: Daemon = await start_daemon(slots={"cpu": 2}, media=HELD_MEDIA)
        await hold_both(js, prefix, media, "dup", clip, tmp_path)

        # No tenant (an older control plane): which job is meant cannot be told, so neither
        # is touched; the refusal names the tenants. A broadcast gets the refusal too.
        for target in ("n1", "all"):
            refused = await ctl(nc, prefix, target, {"verb": "cancel", "job_id": "dup"})
            assert not refused["ok"] and "acme, bolt" in refused["message"]
            assert "tenant" in refused["message"]
        assert d.running.keys() == [("acme", "dup"), ("bolt", "dup")]

        cancelled = await ctl(nc, prefix, "n1", {"verb": "cancel", "job_id": "dup",
                                                 "tenant": "bolt"})  # fmt: skip
        assert cancelled["ok"], cancelled

        async def bolt_cancelled() -> bool:
            return "cancelled" in kinds(await of_tenant(js, prefix, "bolt", "dup"))

        await until(bolt_cancelled)
        assert d.running.keys() == [("acme", "dup")]
        media.release(["acme.dup"])

        async def acme_done() -> bool:
            return "completed" in kinds(await of_tenant(js, prefix, "acme", "dup"))

        await until(acme_done)
    assert "cancelled" not in kinds(await of_tenant(js, prefix, "acme", "dup"))
    assert "completed" not in kinds(await of_tenant(js, prefix, "bolt", "dup"))
    assert not (tmp_path / "bolt" / "dup.mp4").exists()


async def test_a_job_under_another_tenants_msg_id_is_failed_unrun(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    subjects = Subjects(prefix)
    await start_daemon()
    # bolt publishes on its own subject, but with acme's id for job "victim" as Nats-Msg-Id.
    forged = job("victim", clip, tmp_path / "forged.mp4")
    first = await publish(js, prefix, "bolt", forged, job_msg_id("acme", "victim"))
    assert not first.duplicate
    # JetStream dedups on the header alone, stream-wide: acme's own submit of its job, within
    # the dedup window, is now taken for a copy of bolt's and dropped. That is why the daemon
    # refuses a job whose Nats-Msg-Id is not its own: the forgery shows, and never runs.
    own = job("victim", clip, tmp_path / "own.mp4")
    second = await publish(js, prefix, "acme", own, job_msg_id("acme", "victim"))
    assert second.duplicate and second.seq == first.seq

    async def failed() -> bool:
        return "failed" in kinds(await events(js, prefix, "victim"))

    await until(failed)
    [event] = await events(js, prefix, "victim")  # never accepted, never started
    assert event["kind"] == "failed" and event["tenant"] == "bolt"
    assert event["final"] and event["error_kind"] == "permanent"
    assert "Nats-Msg-Id 'acme.victim'" in event["reason"] and "'bolt.victim'" in event["reason"]
    assert not (tmp_path / "forged.mp4").exists()

    async def termed() -> bool:  # no copy is left to be delivered again
        return (await js.stream_info(subjects.jobs_stream)).state.messages == 0

    await until(termed)


async def test_interrupted_attempts_of_two_tenants_are_two_events(
    js: JetStreamContext, nats_url: str, prefix: str, start_daemon: Any, tmp_path: Path
) -> None:
    # What a daemon killed while both tenants' job "same" ran leaves in its journal.
    cfg = config(nats_url, prefix, tmp_path / "n1", "n1")
    journal = await Journal.open(cfg.journal_path)
    try:
        for tenant in TENANTS:
            spec = json.dumps({"v": 1, "job_id": "same", "tenant": tenant, "input": "canary://",
                               "operation": {"op": "canary"}})  # fmt: skip
            await journal.record([
                JobUpdate("same", 1, "received", stream_seq=1, spec=spec, tenant=tenant),
                JobUpdate("same", 1, "running", tenant=tenant),
            ])  # fmt: skip
    finally:
        await journal.close()
    await start_daemon("n1")  # recovery reports each attempt interrupted

    async def both() -> bool:
        return kinds(await events(js, prefix, "same")).count("interrupted") == 2

    await until(both)
    interrupted = await events(js, prefix, "same")
    assert sorted(e["tenant"] for e in interrupted) == ["acme", "bolt"]
    # Distinct ids: the events stream dedups on the id, the control plane keys on it.
    assert len({e["event_id"] for e in interrupted}) == 2
