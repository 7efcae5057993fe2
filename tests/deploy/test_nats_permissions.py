"""Per-node NATS permissions: the nats role's config, rendered by Ansible, run by a real server.

One node's credentials may pull and ack its pools' job consumers, publish its own events and
registry key, and listen on its own inbox and control subjects and on its pools' submits; it may
not publish as another node, submit jobs, read another node's inbox or delete a stream. A refused
publish does not raise where it is made: the server answers `-ERR Permissions Violation`
asynchronously, so the client sees a timeout and an error_cb call, and the tests assert on that
text.
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
import pytest
from nats.aio.client import Client

from common.natsconn import sync_subscriptions
from control.topology import TopologySettings, ensure_topology
from daemon.pull.wake import Wake
from schemas.subjects import Subjects
from tests.support.ansible import run_role

VENV_BIN = Path(sys.executable).parent
PASSWORDS = {"control": "control-pw", "node1": "node1-pw", "node2": "node2-pw"}
SUBJECTS = Subjects("flotilla")
REFUSED_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def rendered_config(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """The nats role applied locally (config only), with nats-server's own -t as validate."""
    root = tmp_path_factory.mktemp("nats-role")
    port = _free_port()
    variables: dict[str, Any] = {
        "nats_prefix": str(root / "prefix"),
        "nats_install": False,
        "nats_manage_user": False,
        "nats_manage_packages": False,
        "nats_manage_systemd": False,
        "nats_user": "root",
        "nats_group": "root",
        "nats_server_binary": str(VENV_BIN / "nats-server"),
        "nats_server_name": "perm-test",
        "nats_listen_address": "127.0.0.1",
        "nats_client_port": port,
        "nats_http_port": _free_port(),
        "nats_flotilla_pools": ["cpu", "nvenc"],
        "nats_flotilla_control_password": PASSWORDS["control"],
        "nats_system_password": "sys-pw",
        "nats_flotilla_nodes": [
            {"name": "node1", "password": PASSWORDS["node1"], "pools": ["cpu"]},
            {"name": "node2", "password": PASSWORDS["node2"], "pools": []},
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
        inbox_prefix=f"_INBOX_{user}" if user.startswith("node") else "_INBOX",
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


@pytest.fixture
async def control(server: str) -> AsyncIterator[Client]:
    nc = await _connect(server, "control")
    await ensure_topology(nc.jetstream(), SUBJECTS, TopologySettings(pools=["cpu", "nvenc"]))
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
    node1: tuple[Client, Errors], control: Client
) -> None:
    """nats-obj:// inputs and outputs work under a node's credentials; the bucket stays safe."""
    nc, errors = node1
    bucket = f"{SUBJECTS.prefix}_media"
    with contextlib.suppress(Exception):  # ensure_topology may already have made it
        await control.jetstream().create_object_store(bucket)
    upload = await control.jetstream().object_store(bucket)
    await upload.put("uploads/job-perm-2/in.mp4", b"input bytes" * 1000)
    store = await nc.jetstream(timeout=5).object_store(bucket)
    try:
        got = await store.get("uploads/job-perm-2/in.mp4")
    except Exception:
        raise AssertionError(errors.seen) from None
    assert got.data == b"input bytes" * 1000
    await store.put("outputs/job-perm-2/out.mp4", b"output bytes")
    await store.put("outputs/job-perm-2/out.mp4", b"output bytes, again")  # overwrite purges
    assert (await upload.get("outputs/job-perm-2/out.mp4")).data == b"output bytes, again"
    assert errors.seen == []
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=REFUSED_TIMEOUT).delete_stream(f"OBJ_{bucket}")
    assert await _wait_for(errors, f"$JS.API.STREAM.DELETE.OBJ_{bucket}")


async def test_node_cannot_submit_jobs(node1: tuple[Client, Errors]) -> None:
    nc, errors = node1
    subject = SUBJECTS.submit("cpu", "normal", "job-forged")
    with pytest.raises(nats.errors.TimeoutError):
        await nc.jetstream(timeout=REFUSED_TIMEOUT).publish(subject, b"{}")
    assert await _wait_for(errors, subject)


async def test_node_pulls_and_acks_its_pool(node1: tuple[Client, Errors], control: Client) -> None:
    nc, errors = node1
    job = json.dumps({"job_id": "job-perm-1"}).encode()
    await control.jetstream().publish(
        SUBJECTS.submit("cpu", "normal", "job-perm-1"), job, headers={"Nats-Msg-Id": "job-perm-1"}
    )
    js = nc.jetstream(timeout=5)
    sub = await js.pull_subscribe_bind(SUBJECTS.consumer("cpu", "normal"), SUBJECTS.jobs_stream)
    (msg,) = await sub.fetch(1, timeout=5)
    assert msg.data == job
    await msg.in_progress()
    await msg.ack_sync(timeout=5)
    info = await js.consumer_info(SUBJECTS.jobs_stream, SUBJECTS.consumer("cpu", "normal"))
    assert info.num_ack_pending == 0
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


async def test_node_hears_only_its_pools_submits(
    node1: tuple[Client, Errors], control: Client
) -> None:
    """The idle pull loop's wake hint: node1 (pool cpu) hears cpu submits, never nvenc's."""
    nc, errors = node1
    got: asyncio.Queue[str] = asyncio.Queue()

    async def on_msg(msg: Any) -> None:
        await got.put(msg.subject)

    await nc.subscribe(f"{SUBJECTS.prefix}.submit.cpu.>", cb=on_msg)
    await sync_subscriptions(nc)
    subject = SUBJECTS.submit("cpu", "low", "job-perm-wake")
    await control.jetstream().publish(subject, b"{}", headers={"Nats-Msg-Id": "job-perm-wake"})
    assert await asyncio.wait_for(got.get(), 5) == subject
    assert errors.seen == []
    await nc.subscribe(f"{SUBJECTS.prefix}.submit.nvenc.>")
    assert await _wait_for(errors, f"{SUBJECTS.prefix}.submit.nvenc.>")
    stored = SUBJECTS.job_stored("cpu", "low", "job-perm-wake")
    await control.jetstream().purge_stream(SUBJECTS.jobs_stream, subject=stored)


async def test_puller_wake_sees_a_refusal(node1: tuple[Client, Errors], control: Client) -> None:
    """The puller's Wake notices a refused subscription (it then polls) and a granted one."""
    nc, _ = node1
    refused = Wake(nc, f"{SUBJECTS.prefix}.submit.nvenc.>")
    assert not await refused.start()
    granted = Wake(nc, f"{SUBJECTS.prefix}.submit.cpu.>")
    assert await granted.start()
    try:
        await control.publish(SUBJECTS.submit("cpu", "high", "job-perm-hint"), b"{}")
        await asyncio.wait_for(granted.event.wait(), 5)
        assert granted.hints["high"] == 1
    finally:
        await granted.stop()
        stored = SUBJECTS.job_stored("cpu", "high", "job-perm-hint")
        await control.jetstream().purge_stream(SUBJECTS.jobs_stream, subject=stored)


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
