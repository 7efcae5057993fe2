"""The version 2 submit subject, `<prefix>.submit.<tenant>.<pool>.<priority>.<job_id>`.

The tenant token is what NATS permissions hold a producer to: a producer allowed only on its
tenant's submits cannot publish for another tenant, and a body naming another tenant is failed,
never run as that tenant. Producers still on the version 1 form get an error PubAck from the
control plane; jobs stored under it before the upgrade still run.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import nats.errors
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import SubjectTransform
from nats.js.errors import APIError, NoStreamResponseError

from control.api.jobcancel import delete_queued
from control.service import ControlPlane
from control.topology import ensure_topology, jobs_stream_config
from daemon.app import Daemon
from schemas.subjects import ERR_SUBMIT_SUBJECT_V1, Subjects
from tests.support.authnats import AuthNatsServer, User
from tests.support.controlplane import control_config
from tests.support.daemons import TOPO, config, events, has, job, kinds, until

FLEET = User("fleet", "fleet-pw")


@pytest_asyncio.fixture
async def auth_server(tmp_path: Path, prefix: str) -> AsyncIterator[AuthNatsServer]:
    acme = User("acme", "acme-pw", publish=[Subjects(prefix).tenant_submits("acme")])
    server = AuthNatsServer(tmp_path / "nats-auth", [FLEET, acme])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _messages(js: JetStreamContext, subjects: Subjects, subject: str) -> int:
    info = await js.stream_info(subjects.jobs_stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def test_a_producer_cannot_run_a_job_as_another_tenant(
    auth_server: AuthNatsServer, prefix: str, clip: Path, tmp_path: Path
) -> None:
    subjects = Subjects(prefix)
    fleet = await nats.connect(auth_server.url_of(FLEET))
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    attacker = await nats.connect(auth_server.url_of(User("acme", "acme-pw")), error_cb=on_error)
    login = {
        "url": auth_server.url,
        "prefix": prefix,
        "user": FLEET.name,
        "password": FLEET.password,
    }
    daemon = Daemon(config(auth_server.url, prefix, tmp_path / "n1", "n1", nats=login))
    try:
        js = fleet.jetstream(timeout=5)
        await ensure_topology(js, subjects, TOPO)
        await daemon.start()
        ajs = attacker.jetstream(timeout=2)

        # Another tenant's subject: the broker refuses the publish, nothing is stored.
        other = job("as-other", clip, tmp_path / "as-other.mp4") | {"tenant": "other"}
        with pytest.raises(nats.errors.TimeoutError):
            await ajs.publish(
                subjects.submit("other", "cpu", "normal", "as-other"), json.dumps(other).encode()
            )
        assert any("permissions violation" in e.lower() for e in errors), errors
        assert await _messages(js, subjects, subjects.job_stored("*", "cpu", "normal", "*")) == 0

        # Its own subject with a body claiming another tenant: stored, then failed unrun.
        forged = job("forged", clip, tmp_path / "forged.mp4") | {"tenant": "other"}
        await ajs.publish(
            subjects.submit("acme", "cpu", "normal", "forged"), json.dumps(forged).encode(),
            headers={"Nats-Msg-Id": "forged"},
        )  # fmt: skip
        own = job("own", clip, tmp_path / "own.mp4") | {"tenant": "acme"}
        await ajs.publish(
            subjects.submit("acme", "cpu", "normal", "own"), json.dumps(own).encode(),
            headers={"Nats-Msg-Id": "own"},
        )  # fmt: skip
        await until(has(js, prefix, "forged", "failed"))
        await until(has(js, prefix, "own", "completed"))

        got = await events(js, prefix, "forged")
        assert kinds(got) == ["failed"]  # never accepted, never started
        assert got[0]["final"] and got[0]["error_kind"] == "permanent"
        assert "'acme'" in got[0]["reason"] and "'other'" in got[0]["reason"]
        assert not (tmp_path / "forged.mp4").exists()
        accepted = [e for e in await events(js, prefix, "own") if e["kind"] == "accepted"]
        assert accepted[0]["tenant"] == "acme"
        # The forged job was termed: no copy of it is left to be delivered again.
        await until(lambda: _gone(js, subjects, "forged"))
    finally:
        await daemon.stop(force=True)
        await attacker.close()
        await fleet.close()


async def _gone(js: JetStreamContext, subjects: Subjects, job_id: str) -> bool:
    return await _messages(js, subjects, subjects.job_stored("*", "cpu", "normal", job_id)) == 0


async def test_a_version_1_submit_gets_a_clear_refusal(
    nc: NATS, nats_url: str, prefix: str, database_url: str
) -> None:
    plane = ControlPlane(control_config(nats_url, prefix, database_url))
    await plane.start()
    try:
        subjects = Subjects(prefix)
        js = nc.jetstream(timeout=10)
        body = json.dumps({"v": 1, "job_id": "old-1", "input": "canary://",
                           "operation": {"op": "canary"}}).encode()  # fmt: skip
        # A producer that never upgraded: nats-py raises the refusal, naming the new form.
        with pytest.raises(APIError) as refused:
            await js.publish(
                f"{prefix}.submit.cpu.normal.old-1", body, headers={"Nats-Msg-Id": "old-1"}
            )
        assert refused.value.code == 400 and refused.value.err_code == ERR_SUBMIT_SUBJECT_V1
        text = refused.value.description or ""
        assert f"{prefix}.submit.<tenant>.<pool>.<priority>.<job_id>" in text
        assert "wire v2" in text and "was not stored" in text
        assert (await js.stream_info(subjects.jobs_stream)).state.messages == 0
        # The same job on the version 2 subject is stored, and answered by JetStream alone.
        ack = await js.publish(
            subjects.submit("default", "cpu", "normal", "old-1"), body,
            headers={"Nats-Msg-Id": "old-1"},
        )  # fmt: skip
        assert ack.stream == subjects.jobs_stream and not ack.duplicate
        assert plane.refusal is not None and plane.refusal.refused == 1
    finally:
        await plane.stop()


async def test_jobs_stored_before_the_upgrade_still_run(
    nc: NATS, nats_url: str, prefix: str, clip: Path, tmp_path: Path
) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream(timeout=5)
    # The topology as the version 1 build left it: same consumers, the old submit subject.
    await ensure_topology(js, subjects, TOPO)
    v1 = jobs_stream_config(subjects, TOPO)
    v1.subjects = [f"{prefix}.submit.*.*.*"]
    v1.subject_transform = SubjectTransform(
        src=f"{prefix}.submit.*.*.*",
        dest=f"{prefix}.jobs.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}.{{{{partition(8,3)}}}}"
        ".{{wildcard(3)}}",
    )
    await js.update_stream(v1)
    spec = job("before", clip, tmp_path / "before.mp4") | {"tenant": "acme"}
    ack = await js.publish(
        f"{prefix}.submit.cpu.normal.before", json.dumps(spec).encode(),
        headers={"Nats-Msg-Id": "before"},
    )  # fmt: skip
    stored = await js.get_msg(subjects.jobs_stream, ack.seq)
    assert stored.subject == subjects.job_stored_v1("cpu", "normal", "before")
    await js.publish(f"{prefix}.submit.cpu.low.queued-v1", b"{}")

    report = await ensure_topology(js, subjects, TOPO)
    assert report.updated == [f"stream {subjects.jobs_stream} (subjects, subject_transform)"]
    assert (await js.stream_info(subjects.jobs_stream)).state.messages == 2
    with pytest.raises(NoStreamResponseError):  # no control plane here to explain why
        await js.publish(f"{prefix}.submit.cpu.normal.after", b"{}")
    # Cancelling a queued job finds it under either stored form.
    await js.publish(subjects.submit("acme", "cpu", "low", "queued-v2"), b"{}")
    assert await delete_queued(js, subjects, ["cpu"], "queued-v1")
    assert not await delete_queued(js, subjects, ["cpu"], "queued-v2", tenant="other")
    assert await delete_queued(js, subjects, ["cpu"], "queued-v2", tenant="acme")
    assert (await js.stream_info(subjects.jobs_stream)).state.messages == 1
    # A job a node has been handed is not queued any more, even before any heartbeat says so:
    # deleting its message would not stop the node.
    await js.publish(subjects.submit("acme", "cpu", "high", "taken-1"), b"{}")
    node = await js.pull_subscribe_bind(subjects.consumer("cpu", "high"), subjects.jobs_stream)
    [taken] = await node.fetch(1, timeout=10)
    assert not await delete_queued(js, subjects, ["cpu"], "taken-1", tenant="acme")
    assert (await js.stream_info(subjects.jobs_stream)).state.messages == 2
    await taken.term()

    daemon = Daemon(config(nats_url, prefix, tmp_path / "n1", "n1"))
    await daemon.start()
    try:
        await until(has(js, prefix, "before", "completed"))
    finally:
        await daemon.stop(force=True)
    accepted = [e for e in await events(js, prefix, "before") if e["kind"] == "accepted"]
    assert accepted[0]["tenant"] == "acme"  # the body's, as before the upgrade
    assert (tmp_path / "before.mp4").exists()
