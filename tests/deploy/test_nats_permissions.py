"""Per-node and per-producer NATS permissions: the nats role's config, rendered by Ansible, run
by a real server.

One node's credentials may pull and ack its pools' job consumers, publish its own events and
registry key, listen on its own inbox and control subjects and on its pools' submits, and read and
write objects in the media buckets; it may not publish as another node, submit jobs, read another
node's inbox, delete a stream or purge (or roll up) a media bucket. A producer may submit only its
tenant's jobs, call the API, hear only its own inbox and, with media, use only its tenant's bucket.
A refused publish does not raise where it is made: the server answers `-ERR Permissions
Violation` asynchronously, so the client sees a timeout and an error_cb call, and the tests
assert on that text.

Submit subjects are written out in their tenant form, `<prefix>.submit.<tenant>.<pool>.
<priority>.<job_id>`, which is what the role grants.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from common.natsconn import sync_subscriptions
from control.cli.upload import put_file, upload_inputs
from control.topology import TopologySettings, ensure_topology
from daemon.job.failures import FailureCounts
from daemon.media.objstore import download, upload
from daemon.pull.wake import Wake
from schemas.jobs import JobSpec
from schemas.operations import Probe
from schemas.subjects import Subjects
from tests.support.ansible import run_role

VENV_BIN = Path(sys.executable).parent
PASSWORDS = {
    "control": "control-pw",
    "node1": "node1-pw",
    "node2": "node2-pw",
    "prod-a": "prod-a-pw",
    "prod-b": "prod-b-pw",
}
SUBJECTS = Subjects("flotilla")
MEDIA = "flotilla_media"
TENANTS = {"prod-a": "acme", "prod-b": "rival"}
REFUSED_TIMEOUT = 1.0
#: A fair-share pool: its consumers are one per tenant (and the canary's) and priority.
SHARES = {"qsv": {"acme": 2.0, "rival": 1.0}}


def submit_subject(tenant: str, pool: str, priority: str, job_id: str) -> str:
    return SUBJECTS.submit(tenant, pool, priority, job_id)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _local_role_vars(prefix: Path) -> dict[str, Any]:
    """The role applied locally as root: config files only, under `prefix`."""
    return {
        "nats_prefix": str(prefix),
        "nats_install": False,
        "nats_manage_user": False,
        "nats_manage_packages": False,
        "nats_manage_systemd": False,
        "nats_user": "root",
        "nats_group": "root",
        "nats_server_binary": str(VENV_BIN / "nats-server"),
    }


@pytest.fixture(scope="module")
def rendered_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The nats role applied locally (config only), with nats-server's own -t as validate."""
    root = tmp_path_factory.mktemp("nats-role")
    port = _free_port()
    variables: dict[str, Any] = {
        **_local_role_vars(root / "prefix"),
        "nats_server_name": "perm-test",
        "nats_listen_address": "127.0.0.1",
        "nats_client_port": port,
        "nats_http_port": _free_port(),
        "nats_flotilla_pools": ["cpu", "nvenc", "qsv"],
        "nats_flotilla_shares": SHARES,
        "nats_flotilla_control_password": PASSWORDS["control"],
        "nats_system_password": "sys-pw",
        "nats_flotilla_nodes": [
            {"name": "node1", "password": PASSWORDS["node1"], "pools": ["cpu", "qsv"]},
            {"name": "node2", "password": PASSWORDS["node2"], "pools": []},
        ],
        "nats_flotilla_producers": [
            {"name": name, "password": PASSWORDS[name], "tenant": tenant, "media": True}
            for name, tenant in TENANTS.items()
        ],
    }
    run_role("nats", variables, root / "run")
    config = root / "prefix" / "etc" / "nats-server" / "nats-server.conf"
    assert "sync_interval: always" in config.read_text()
    return config, port


@pytest.fixture(scope="module")
def server(rendered_config: tuple[Path, int]) -> Iterator[str]:
    config, port = rendered_config
    log = config.parent / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(VENV_BIN / "nats-server"), "-c", str(config)], stdout=out, stderr=out
        )
    try:
        for _ in range(200):
            if "Server is ready" in log.read_text() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None and "Server is ready" in log.read_text(), log.read_text()
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Errors:
    """What error_cb saw: the only place a refused publish is reported."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def callback(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    def violations(self, subject: str) -> list[str]:
        # nats-py lower-cases the server's "-ERR 'Permissions Violation for Publish to ...'".
        wanted = f'"{subject.lower()}"'
        return [e for e in self.seen if "permissions violation" in e and wanted in e]


async def _connect(url: str, user: str, errors: Errors | None = None) -> Client:
    return await nats.connect(
        url,
        user=user,
        password=PASSWORDS[user],
        inbox_prefix="_INBOX" if user == "control" else f"_INBOX_{user}",
        error_cb=(errors or Errors()).callback,
        allow_reconnect=False,
        connect_timeout=5,
    )


async def _wait_for(errors: Errors, subject: str) -> list[str]:
    for _ in range(100):
        if found := errors.violations(subject):
            return found
        await asyncio.sleep(0.05)
    return []


async def _submit_job(js: JetStreamContext, pool: str, priority: str, job_id: str) -> None:
    """Store a job in the jobs stream as tenant acme's producer would."""
    subject = submit_subject("acme", pool, priority, job_id)
    job = json.dumps({"job_id": job_id}).encode()
    await js.publish(subject, job, headers={"Nats-Msg-Id": job_id})


@pytest.fixture
async def control(server: str) -> AsyncIterator[Client]:
    nc = await _connect(server, "control")
    js = nc.jetstream()
    settings = TopologySettings(
        pools=["cpu", "nvenc", "qsv"], media_tenants=list(TENANTS.values()),
        shares={p: dict(w) for p, w in SHARES.items()},
    )  # fmt: skip
    await ensure_topology(js, SUBJECTS, settings)
    yield nc
    await nc.close()


@pytest.fixture
async def node1(server: str, control: Client) -> AsyncIterator[tuple[Client, Errors]]:
    errors = Errors()
    nc = await _connect(server, "node1", errors)
    yield nc, errors
    with contextlib.suppress(Exception):
        await nc.close()


@pytest.mark.timeout(300)
async def test_node_publishes_its_own_events(node1: tuple[Client, Errors]) -> None:
    nc, errors = node1
    ack = await nc.jetstream(timeout=5).publish(SUBJECTS.events("node1", "heartbeat"), b"{}")
    assert ack.stream == SUBJECTS.events_stream
    assert errors.seen == []


async def test_node_cannot_publish_as_another_node(node1: tuple[Client, Errors]) -> None:
    nc, errors = node1
    subject = SUBJECTS.events("node2", "completed")
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=REFUSED_TIMEOUT).publish(subject, b"{}")
    assert await _wait_for(errors, subject)


async def test_node_cannot_delete_a_stream(node1: tuple[Client, Errors], control: Client) -> None:
    nc, errors = node1
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=REFUSED_TIMEOUT).delete_stream(SUBJECTS.jobs_stream)
    assert await _wait_for(errors, f"$JS.API.STREAM.DELETE.{SUBJECTS.jobs_stream}")
    info = await control.jetstream().stream_info(SUBJECTS.jobs_stream)
    assert info.config.name == SUBJECTS.jobs_stream


async def test_node_reads_and_writes_media_objects(
    node1: tuple[Client, Errors], control: Client, tmp_path: Path
) -> None:
    """The daemon's nats-obj:// paths work under a node's credentials, overwrites included."""
    nc, errors = node1
    js = nc.jetstream(timeout=5)
    admin = control.jetstream(timeout=5)
    for bucket in (MEDIA, f"{MEDIA}_acme", f"{MEDIA}_rival"):
        first, second, back = tmp_path / "first", tmp_path / "second", tmp_path / "back"
        first.write_bytes(b"output bytes" * 30_000)
        second.write_bytes(b"output bytes, again" * 100)
        await upload(admin, bucket, "uploads/job-perm-2/in.mp4", first, within=30)
        size = await download(js, bucket, "uploads/job-perm-2/in.mp4", back, cap=10**9, within=30)
        assert size == first.stat().st_size and back.read_bytes() == first.read_bytes()
        await upload(js, bucket, "outputs/job-perm-2/out.mp4", first, within=30)
        await upload(js, bucket, "outputs/job-perm-2/out.mp4", second, within=30)  # overwrite
        got = await (await admin.object_store(bucket)).get("outputs/job-perm-2/out.mp4")
        assert got.data == second.read_bytes()  # a reader gets the new bytes
    assert errors.seen == []


async def test_node_cannot_purge_or_wipe_the_media_store(
    node1: tuple[Client, Errors], control: Client, tmp_path: Path
) -> None:
    """No purge, stream delete or message delete request, nor a roll-up header, gets through."""
    nc, errors = node1
    js = nc.jetstream(timeout=REFUSED_TIMEOUT)
    admin = control.jetstream(timeout=5)
    src = tmp_path / "keep"
    src.write_bytes(b"keep me" * 1000)
    for bucket in (MEDIA, f"{MEDIA}_acme"):
        stream = f"OBJ_{bucket}"
        await upload(admin, bucket, "keep.bin", src, within=30)
        before = (await admin.stream_info(stream)).state.messages
        with pytest.raises(nats.errors.TimeoutError):
            await js.purge_stream(stream)
        assert await _wait_for(errors, f"$JS.API.STREAM.PURGE.{stream}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.purge_stream(stream, subject=f"$O.{bucket}.C.>")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_stream(stream)
        assert await _wait_for(errors, f"$JS.API.STREAM.DELETE.{stream}")
        with pytest.raises(nats.errors.TimeoutError):
            await js.delete_msg(stream, 1)
        assert await _wait_for(errors, f"$JS.API.STREAM.MSG.DELETE.{stream}")
        # A publish it may make, with a roll-up header: the stream itself refuses it.
        with pytest.raises(nats.js.errors.APIError):
            await nc.jetstream(timeout=5).publish(
                f"$O.{bucket}.C.wipe", b"", headers={"Nats-Rollup": "all"}
            )
        assert (await admin.stream_info(stream)).state.messages == before
        back = tmp_path / "back"
        await download(admin, bucket, "keep.bin", back, cap=10**9, within=30)
        assert back.read_bytes() == src.read_bytes()


async def test_node_cannot_submit_jobs(node1: tuple[Client, Errors]) -> None:
    nc, errors = node1
    subject = submit_subject("acme", "cpu", "normal", "job-forged")
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=REFUSED_TIMEOUT).publish(subject, b"{}")
    assert await _wait_for(errors, subject)


async def test_node_pulls_and_acks_its_pool(node1: tuple[Client, Errors], control: Client) -> None:
    nc, errors = node1
    await _submit_job(control.jetstream(), "cpu", "normal", "job-perm-1")
    js = nc.jetstream(timeout=5)
    sub = await js.pull_subscribe_bind(SUBJECTS.consumer("cpu", "normal"), SUBJECTS.jobs_stream)
    (msg,) = await sub.fetch(1, timeout=5)
    assert json.loads(msg.data) == {"job_id": "job-perm-1"}
    # Before committing outputs, a redelivered attempt reads whether its message is still queued.
    seq = msg.metadata.sequence.stream
    assert (await js.get_msg(SUBJECTS.jobs_stream, seq)).data == msg.data
    await msg.in_progress()
    await msg.ack_sync(timeout=5)
    info = await js.consumer_info(SUBJECTS.jobs_stream, SUBJECTS.consumer("cpu", "normal"))
    assert info.num_ack_pending == 0
    assert errors.seen == []


async def test_node_pulls_a_fair_share_pools_tenant_lanes(
    node1: tuple[Client, Errors], control: Client
) -> None:
    nc, errors = node1
    await _submit_job(control.jetstream(), "qsv", "normal", "job-lane-1")
    js = nc.jetstream(timeout=5)
    # The weights are read from the jobs stream's metadata, as the daemon's puller does.
    info = await js.stream_info(SUBJECTS.jobs_stream)
    assert json.loads((info.config.metadata or {})["flotilla.shares"])["qsv"]["acme"] == 2.0
    fair = TopologySettings(pools=["qsv"], shares={"qsv": dict(SHARES["qsv"])}).subjects(SUBJECTS)
    for lane in fair.lanes("qsv", "high"):
        await js.consumer_info(SUBJECTS.jobs_stream, lane.consumer)  # the canary's too
    lane = fair.lane("qsv", "normal", "acme")
    assert lane is not None
    sub = await js.pull_subscribe_bind(lane.consumer, SUBJECTS.jobs_stream)
    (msg,) = await sub.fetch(1, timeout=5)
    assert json.loads(msg.data) == {"job_id": "job-lane-1"}
    await msg.ack_sync(timeout=5)
    assert errors.seen == []


async def test_node_cannot_pull_another_pool(node1: tuple[Client, Errors]) -> None:
    nc, errors = node1
    consumer = SUBJECTS.consumer("nvenc", "high")
    sub = await nc.jetstream(timeout=5).pull_subscribe_bind(consumer, SUBJECTS.jobs_stream)
    with pytest.raises(asyncio.TimeoutError):
        await sub.fetch(1, timeout=REFUSED_TIMEOUT)
    assert await _wait_for(errors, f"$JS.API.CONSUMER.MSG.NEXT.{SUBJECTS.jobs_stream}.{consumer}")


async def test_node_writes_only_its_registry_key(node1: tuple[Client, Errors]) -> None:
    nc, errors = node1
    kv = await nc.jetstream(timeout=REFUSED_TIMEOUT).key_value(SUBJECTS.nodes_bucket)
    assert await kv.put("node1", b"{}") > 0
    with pytest.raises(nats.errors.TimeoutError):
        await kv.put("node2", b"{}")
    assert await _wait_for(errors, f"$KV.{SUBJECTS.nodes_bucket}.node2")


async def test_node_counts_failed_runs_of_any_job(node1: tuple[Client, Errors]) -> None:
    """Any node may run any job of its pools, so it reads and raises any job's failure count."""
    nc, errors = node1
    counts = FailureCounts(nc.jetstream(timeout=REFUSED_TIMEOUT), SUBJECTS)
    assert await counts.failed_before("acme", "j-count") == 0
    assert await counts.record("acme", "j-count", 1)
    assert await counts.record("acme", "j-count", 2)
    assert await counts.failed_before("acme", "j-count") == 2
    assert not errors.seen


async def test_node_listens_only_on_its_own_subjects(
    node1: tuple[Client, Errors], control: Client
) -> None:
    nc, errors = node1
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await got.put(msg.data)
        await msg.respond(b"ok")

    await nc.subscribe(SUBJECTS.ctl("node1", "*"), cb=on_msg)
    await nc.subscribe(SUBJECTS.ctl("all", "*"), cb=on_msg)
    await sync_subscriptions(nc)
    reply = await control.request(SUBJECTS.ctl("node1", "drain"), b"drain", timeout=5)
    assert reply.data == b"ok" and await got.get() == b"drain"
    await nc.subscribe("_INBOX_node2.>")
    assert await _wait_for(errors, "_INBOX_node2.>")


async def test_node_asks_whether_a_job_ended_and_only_the_control_plane_answers(
    node1: tuple[Client, Errors], control: Client
) -> None:
    """The question a node asks before running a redelivered job (daemon/job/endquery.py): on its
    own subject only, and no node can stand in for the control plane's answer."""
    nc, errors = node1

    async def answer(msg: Any) -> None:
        await msg.respond(b'{"ended": "completed"}')

    sub = await control.subscribe(SUBJECTS.job_end_wildcard, cb=answer)
    await sync_subscriptions(control)
    try:
        reply = await nc.request(SUBJECTS.job_end("node1"), b"{}", timeout=5)
        assert reply.data == b'{"ended": "completed"}' and errors.seen == []
        with pytest.raises(nats.errors.TimeoutError):  # as another node
            await nc.request(SUBJECTS.job_end("node2"), b"{}", timeout=REFUSED_TIMEOUT)
        assert await _wait_for(errors, SUBJECTS.job_end("node2"))
        await nc.subscribe(SUBJECTS.job_end_wildcard)  # to answer node2's questions
        assert await _wait_for(errors, SUBJECTS.job_end_wildcard)
    finally:
        await sub.unsubscribe()


async def test_node_hears_only_its_pools_submits(
    node1: tuple[Client, Errors], control: Client
) -> None:
    """The idle pull loop's wake hint: node1 (pool cpu) hears cpu submits of every tenant, never
    nvenc's."""
    nc, errors = node1
    got: asyncio.Queue[str] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await got.put(msg.subject)

    await nc.subscribe("flotilla.submit.*.cpu.>", cb=on_msg)
    await sync_subscriptions(nc)
    for tenant in ("acme", "rival"):
        subject = submit_subject(tenant, "cpu", "low", "job-perm-wake")
        await control.publish(subject, b"{}")
        assert await asyncio.wait_for(got.get(), 5) == subject
    assert errors.seen == []
    await nc.subscribe("flotilla.submit.*.nvenc.>")
    assert await _wait_for(errors, "flotilla.submit.*.nvenc.>")
    await _drop_test_jobs(control)


async def test_puller_wake_sees_a_refusal(node1: tuple[Client, Errors], control: Client) -> None:
    """The puller's Wake notices a refused subscription (it then polls) and a granted one."""
    nc, _ = node1
    refused = Wake(nc, "flotilla.submit.*.nvenc.>")
    assert not await refused.start()
    granted = Wake(nc, "flotilla.submit.*.cpu.>")
    assert await granted.start()
    try:
        await control.publish(submit_subject("acme", "cpu", "high", "job-perm-hint"), b"{}")
        await asyncio.wait_for(granted.event.wait(), 5)
        assert granted.hints["high"] == 1
    finally:
        await granted.stop()
        await _drop_test_jobs(control)


async def test_node_pulls_its_pools_due_lanes_and_hears_releases(
    node1: tuple[Client, Errors], control: Client
) -> None:
    """The leader releases deadline jobs into due lanes (control/deadlines): node1 pulls its
    pool's due lane (and a fair pool's per-tenant due lanes), hears the release as a wake hint,
    and cannot release a job itself."""
    nc, errors = node1
    got: asyncio.Queue[str] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await got.put(msg.subject)

    await nc.subscribe(SUBJECTS.due_captured("cpu"), cb=on_msg)
    await sync_subscriptions(nc)
    subject = SUBJECTS.due_stored("acme", "cpu", "normal", "job-due-1")
    job = json.dumps({"job_id": "job-due-1"}).encode()
    await control.jetstream().publish(subject, job, headers={"Nats-Msg-Id": "acme.job-due-1.due"})
    assert await asyncio.wait_for(got.get(), 5) == subject
    js = nc.jetstream(timeout=5)
    sub = await js.pull_subscribe_bind(SUBJECTS.due_consumer("cpu", "normal"), SUBJECTS.jobs_stream)
    (msg,) = await sub.fetch(1, timeout=5)
    assert json.loads(msg.data) == {"job_id": "job-due-1"}
    await msg.ack_sync(timeout=5)
    fair = TopologySettings(pools=["qsv"], shares={"qsv": dict(SHARES["qsv"])}).subjects(SUBJECTS)
    lane = fair.lane("qsv", "normal", "acme", due=True)
    assert lane is not None
    await js.consumer_info(SUBJECTS.jobs_stream, lane.consumer)
    assert errors.seen == []
    forged = SUBJECTS.due_stored("acme", "cpu", "high", "job-due-forged")
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=REFUSED_TIMEOUT).publish(forged, b"{}")
    assert await _wait_for(errors, forged)
    await nc.subscribe(SUBJECTS.due_captured("nvenc"))
    assert await _wait_for(errors, SUBJECTS.due_captured("nvenc"))
    await control.jetstream().purge_stream(SUBJECTS.jobs_stream, subject="flotilla.due.>")


async def _drop_test_jobs(control: Client) -> None:
    """Whatever the core publishes above left in the jobs stream."""
    await control.jetstream().purge_stream(SUBJECTS.jobs_stream, subject="flotilla.jobs.>")


# --- producers --------------------------------------------------------------------------------


@pytest.fixture
async def prod_b(server: str, control: Client) -> AsyncIterator[tuple[Client, Errors]]:
    """Tenant rival's producer."""
    errors = Errors()
    nc = await _connect(server, "prod-b", errors)
    yield nc, errors
    with contextlib.suppress(Exception):
        await nc.close()


async def test_producer_submits_its_own_tenants_jobs(
    prod_b: tuple[Client, Errors], control: Client
) -> None:
    nc, errors = prod_b
    subject = submit_subject("rival", "cpu", "normal", "job-rival-1")
    ack = await nc.jetstream(timeout=5).publish(
        subject, b"{}", headers={"Nats-Msg-Id": "job-rival-1"}
    )
    assert ack.seq is not None and not ack.duplicate  # the PubAck came back on its inbox
    assert errors.seen == []
    await _drop_test_jobs(control)


async def test_producer_cannot_submit_another_tenants_jobs(
    prod_b: tuple[Client, Errors],
) -> None:
    nc, errors = prod_b
    for subject in (
        submit_subject("acme", "cpu", "normal", "job-forged"),
        "flotilla.submit.cpu.normal.job-forged",  # the tenant-less form
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=REFUSED_TIMEOUT).publish(subject, b"{}")
        assert await _wait_for(errors, subject)


async def test_producer_holds_its_own_tenants_deadline_jobs(
    prod_b: tuple[Client, Errors], control: Client
) -> None:
    """A deadline job is submitted to the held subject (to run earliest deadline first): a
    producer may hold its own tenant's jobs, never another tenant's, and never put a job straight
    into a due lane, ahead of everyone's."""
    nc, errors = prod_b
    js = nc.jetstream(timeout=5)
    held = SUBJECTS.timed("rival", "cpu", "normal", "job-rival-held")
    ack = await js.publish(held, b"{}", headers={"Nats-Msg-Id": "rival.job-rival-held"})
    assert ack.seq is not None and not ack.duplicate
    assert errors.seen == []
    for subject in (
        SUBJECTS.timed("acme", "cpu", "normal", "job-forged"),
        SUBJECTS.due_stored("rival", "cpu", "normal", "job-forged"),
    ):
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=REFUSED_TIMEOUT).publish(subject, b"{}")
        assert await _wait_for(errors, subject)
    await control.jetstream().purge_stream(SUBJECTS.jobs_stream, subject="flotilla.timed.>")


async def test_producer_calls_the_api(prod_b: tuple[Client, Errors], control: Client) -> None:
    nc, errors = prod_b

    async def answer(msg: Any) -> None:
        await msg.respond(b"pong")

    await control.subscribe("flotilla.api.ping", cb=answer)
    await sync_subscriptions(control)
    reply = await nc.request("flotilla.api.ping", b"", timeout=5)
    assert reply.data == b"pong" and errors.seen == []


async def test_producer_hears_no_events_nor_other_inboxes(
    prod_b: tuple[Client, Errors],
) -> None:
    nc, errors = prod_b
    for subject in (
        "flotilla.events.>",
        "flotilla.events.node1.completed",
        "flotilla.events.*.completed",
        "_INBOX.>",
        "_INBOX_prod-a.>",
        "_INBOX_node1.>",
        "flotilla.submit.acme.>",
        "flotilla.ctl.node1.drain",
        "flotilla.updates.>",
        "flotilla.updates.acme.>",
        "flotilla.updates.*.job-1.*",
        ">",
    ):
        await nc.subscribe(subject)
        assert await _wait_for(errors, subject), subject


async def test_producer_follows_its_own_tenants_job_updates(
    prod_b: tuple[Client, Errors], control: Client
) -> None:
    nc, errors = prod_b
    got: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_update(msg: Any) -> None:
        got.put_nowait(msg.data)

    await nc.subscribe(SUBJECTS.job_updates("rival", "job-rival-7"), cb=on_update)
    await sync_subscriptions(nc)
    await control.publish(SUBJECTS.job_updates("rival", "job-rival-7", "progress"), b"50%")
    assert await asyncio.wait_for(got.get(), 10) == b"50%" and errors.seen == []


async def test_producer_cannot_touch_the_jobs_stream(prod_b: tuple[Client, Errors]) -> None:
    nc, errors = prod_b
    js = nc.jetstream(timeout=REFUSED_TIMEOUT)
    with pytest.raises(nats.errors.TimeoutError):
        await js.stream_info(SUBJECTS.jobs_stream)
    assert await _wait_for(errors, f"$JS.API.STREAM.INFO.{SUBJECTS.jobs_stream}")
    with pytest.raises(nats.errors.TimeoutError):
        await js.purge_stream(SUBJECTS.jobs_stream)
    assert await _wait_for(errors, f"$JS.API.STREAM.PURGE.{SUBJECTS.jobs_stream}")
    consumer = SUBJECTS.consumer("cpu", "normal")
    sub = await js.pull_subscribe_bind(consumer, SUBJECTS.jobs_stream)
    with pytest.raises(asyncio.TimeoutError):
        await sub.fetch(1, timeout=REFUSED_TIMEOUT)
    assert await _wait_for(errors, f"$JS.API.CONSUMER.MSG.NEXT.{SUBJECTS.jobs_stream}.{consumer}")


async def test_producer_uses_only_its_tenants_bucket(
    prod_b: tuple[Client, Errors], control: Client, tmp_path: Path
) -> None:
    nc, errors = prod_b
    src = tmp_path / "in.mp4"
    src.write_bytes(b"rival's input" * 1000)
    spec = JobSpec(job_id="job-rival-up", input=str(src), operation=Probe(), tenant="rival")
    # `flotilla submit --upload` under the producer's credentials: its tenant's bucket.
    uploaded = await upload_inputs(nc, SUBJECTS, spec)
    assert uploaded.input == f"nats-obj://{MEDIA}_rival/uploads/rival/job-rival-up/in.mp4"
    back = tmp_path / "back"
    js = nc.jetstream(timeout=5)
    await download(
        js, f"{MEDIA}_rival", "uploads/rival/job-rival-up/in.mp4", back, cap=10**9, within=30
    )
    assert back.read_bytes() == src.read_bytes()
    assert errors.seen == []
    refused = nc.jetstream(timeout=REFUSED_TIMEOUT)
    for bucket in (f"{MEDIA}_acme", MEDIA):
        stream = f"OBJ_{bucket}"
        with pytest.raises(nats.errors.TimeoutError):
            await refused.publish(f"$O.{bucket}.C.forged", b"forged")
        assert await _wait_for(errors, f"$O.{bucket}.C.forged")
        with pytest.raises(nats.errors.TimeoutError):  # the upload path: its first chunk
            await put_file(refused, bucket, "forged.bin", src)
        with pytest.raises(nats.errors.TimeoutError):
            await refused.get_last_msg(stream, f"$O.{bucket}.M.>")
        assert await _wait_for(errors, f"$JS.API.STREAM.MSG.GET.{stream}")
    for bucket in (f"{MEDIA}_rival", f"{MEDIA}_acme", MEDIA):
        stream = f"OBJ_{bucket}"
        with pytest.raises(nats.errors.TimeoutError):
            await refused.purge_stream(stream)
        assert await _wait_for(errors, f"$JS.API.STREAM.PURGE.{stream}")
        with pytest.raises(nats.errors.TimeoutError):
            await refused.delete_stream(stream)
        assert await _wait_for(errors, f"$JS.API.STREAM.DELETE.{stream}")
    with pytest.raises(nats.js.errors.APIError):  # its own bucket refuses a roll-up too
        await js.publish(f"$O.{MEDIA}_rival.C.wipe", b"", headers={"Nats-Rollup": "all"})
    for bucket in (f"{MEDIA}_acme", MEDIA):
        forged = f"$O.{bucket}.C.forged"
        info = await control.jetstream().stream_info(f"OBJ_{bucket}", subjects_filter=forged)
        assert not info.state.subjects  # nothing it tried landed in another bucket


def test_role_refuses_a_producer_it_cannot_confine(tmp_path: Path) -> None:
    """A tenant that is no subject token would widen `submit.<tenant>.>`: refused up front."""
    variables: dict[str, Any] = {
        **_local_role_vars(tmp_path / "prefix"),
        "nats_flotilla_control_password": PASSWORDS["control"],
        "nats_system_password": "sys-pw",
        "nats_flotilla_nodes": [{"name": "node1", "password": PASSWORDS["node1"]}],
        "nats_flotilla_producers": [{"name": "bad", "password": "pw", "tenant": "acme.>"}],
    }
    with pytest.raises(AssertionError, match="producer bad needs"):
        run_role("nats", variables, tmp_path / "run")
    assert not (tmp_path / "prefix" / "etc" / "nats-server" / "nats-server.conf").exists()


# --- a cluster of three with JetStream R3 -----------------------------------------------------

CLUSTER = ("n1", "n2", "n3")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[str]]:
    """Three servers on loopback, each config rendered by the role for its own inventory host."""
    root = tmp_path_factory.mktemp("nats-cluster")
    hosts: dict[str, dict[str, Any]] = {}
    for name in CLUSTER:
        hosts[name] = {
            "ansible_connection": "local",
            "nats_prefix": str(root / name),
            "nats_server_name": name,
            "nats_client_port": _free_port(),
            "nats_http_port": _free_port(),
            "nats_cluster_port": _free_port(),
            "nats_cluster_advertise": "127.0.0.1",
        }
    inventory = root / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"children": {"nats": {"hosts": hosts}}}}))
    variables = {
        "nats_install": False,
        "nats_manage_user": False,
        "nats_manage_packages": False,
        "nats_manage_systemd": False,
        "nats_user": "root",
        "nats_group": "root",
        "nats_server_binary": str(VENV_BIN / "nats-server"),
        "nats_listen_address": "127.0.0.1",
        "nats_flotilla_control_password": PASSWORDS["control"],
        "nats_system_password": "sys-pw",
        "nats_cluster_password": "route-pw",
        "nats_flotilla_nodes": [{"name": "node1", "password": PASSWORDS["node1"]}],
    }
    run_role("nats", variables, root / "run", inventory=inventory)
    procs = []
    try:
        for name in CLUSTER:
            config = root / name / "etc" / "nats-server" / "nats-server.conf"
            log = (root / f"{name}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [str(VENV_BIN / "nats-server"), "-c", str(config)], stdout=log, stderr=log
                )
            )
            log.close()
        yield [f"nats://127.0.0.1:{hosts[name]['nats_client_port']}" for name in CLUSTER]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.timeout(300)
async def test_cluster_of_three_keeps_r3_streams(cluster: list[str]) -> None:
    nc = await nats.connect(
        cluster, user="control", password=PASSWORDS["control"], max_reconnect_attempts=60
    )
    try:
        js = nc.jetstream(timeout=5)
        settings = TopologySettings(pools=["cpu"], replicas=3)
        # The meta leader is elected a few seconds after the routes connect.
        for _ in range(60):
            try:
                await ensure_topology(js, SUBJECTS, settings)
                break
            except Exception:
                await asyncio.sleep(0.5)
        info = await js.stream_info(SUBJECTS.jobs_stream)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and info.cluster.leader in CLUSTER
        assert len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()
