"""The fleet API over real NATS: submit validation against live nodes, cancel, nodes, summary."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from common.natsconn import NatsSettings
from control.api.ratelimit import TenantLimiter
from control.api.service import ApiService, ApiSettings
from control.cli.apiclient import ApiClient
from control.cli.nodes import all_nodes
from control.nodes import NodeTracker
from control.topology import TopologySettings, ensure_topology
from schemas import api
from schemas.codec import MAX_MESSAGE_BYTES, encode
from schemas.subjects import Subjects
from tests.support.api import job
from tests.support.noderecords import node_record, put_node, tracking

POOLS = ["cpu", "nvenc"]


@pytest_asyncio.fixture
async def fleet(nc: NATS, prefix: str) -> AsyncIterator[NodeTracker]:
    subjects = Subjects(prefix)
    await ensure_topology(nc.jetstream(), subjects, TopologySettings(pools=POOLS))
    async with tracking(nc.jetstream(), subjects) as tracker:
        yield tracker


@pytest_asyncio.fixture
async def service(nc: NATS, prefix: str, fleet: NodeTracker) -> AsyncIterator[ApiService]:
    svc = ApiService(nc, Subjects(prefix), ApiSettings(pools=POOLS), fleet)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


async def call(
    nc: NATS, prefix: str, verb: str, body: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    msg = await nc.request(f"{prefix}.api.{verb}", msgspec.json.encode(body), timeout=5)
    return msgspec.json.decode(msg.data), dict(msg.headers or {})


async def test_submit_refused_when_no_node_can_run_it(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("j1")})
    assert headers["Nats-Service-Error-Code"] == "409"
    assert "fleet is empty" in reply["message"]

    await put_node(
        nc.jetstream(), service.subjects, node_record("n1", labels={"site": "a"}), seen_by=fleet
    )
    cases = [
        (job("j2", requirements={"accel": "nvenc"}), "does not serve pool 'nvenc'"),
        (job("j3", requirements={"labels": {"site": "b"}}), "lacks label site=b"),
        (job("j4", requirements={"min_gpu_memory_mb": 1024}), "no GPU with 1024 MiB"),
        (job("j5", operation={"op": "transcode", "codec": "hevc"}), "none of the encoders"),
    ]
    for body, why in cases:
        reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": body})
        assert headers["Nats-Service-Error-Code"] == "409", body
        assert why in reply["message"]

    stale = node_record("n2", pools=["nvenc"], encoders=["h264_nvenc"], ts=1.0)
    await put_node(nc.jetstream(), service.subjects, stale, seen_by=fleet)
    reply, headers = await call(
        nc, prefix, "job.submit", {"v": 1, "job": job("j6", requirements={"accel": "nvenc"})}
    )
    assert "n2 is offline" in reply["message"]


async def test_each_answer_is_timed_by_verb(nc: NATS, prefix: str, fleet: NodeTracker) -> None:
    timed: list[tuple[str, float]] = []
    svc = ApiService(nc, Subjects(prefix), ApiSettings(pools=POOLS), fleet,
                     observe=lambda verb, s: timed.append((verb, s)))  # fmt: skip
    await svc.start()
    try:
        await put_node(nc.jetstream(), svc.subjects, node_record("n1"), seen_by=fleet)
        _, ok = await call(nc, prefix, "job.submit", {"v": 1, "job": job("t1")})
        _, bad = await call(nc, prefix, "job.submit", {"v": 1, "job": {"job_id": "x"}})
        _, refused = await call(nc, prefix, "node.drain", {"v": 1, "node_id": "n1"})
        _, listed = await call(nc, prefix, "node.list", {"v": 1})
    finally:
        await svc.stop()
    assert "Nats-Service-Error-Code" not in ok and bad["Nats-Service-Error-Code"] == "400"
    assert "Nats-Service-Error-Code" not in listed
    # Refusals and errors are timed too: they are answers the caller waited for.
    assert "Nats-Service-Error-Code" in refused  # no such node answers the relay
    assert [v for v, _ in timed] == ["job.submit", "job.submit", "node.drain", "node.list"]
    assert all(s > 0 for _, s in timed)


async def test_submit_malformed_is_400(service: ApiService, nc: NATS, prefix: str) -> None:
    reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": {"job_id": "x"}})
    assert headers["Nats-Service-Error-Code"] == "400"
    assert api.ApiError(code=400, message=reply["message"]).code == 400


async def test_valid_submit_is_stored_and_cancel_deletes_it(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    js = nc.jetstream()
    subjects = service.subjects
    await put_node(js, subjects, node_record("n1"), seen_by=fleet)
    reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("good-1")})
    assert "Nats-Service-Error-Code" not in headers, reply
    sub = msgspec.convert(reply, api.SubmitReply)
    assert sub.subject == subjects.job_stored("default", "cpu", "normal", "good-1")
    stored = await js.get_msg(subjects.jobs_stream, sub.seq)
    assert stored.subject == sub.subject
    again, _ = await call(nc, prefix, "job.submit", {"v": 1, "job": job("good-1")})
    assert again["duplicate"] is True and again["seq"] == sub.seq

    summary, _ = await call(nc, prefix, "fleet.summary", {})
    cpu = next(p for p in summary["pools"] if p["pool"] == "cpu")
    assert cpu["queued"] == 1 and cpu["nodes_online"] == 1
    assert summary["nodes_by_state"] == {"online": 1}

    ack, _ = await call(nc, prefix, "job.cancel", {"v": 1, "job_id": "good-1"})
    assert ack["ok"] is True and "queued" in ack["message"]
    try:
        await js.get_msg(subjects.jobs_stream, sub.seq)
        raise AssertionError("message still stored after cancel")
    except NotFoundError:
        pass


async def test_node_list_and_drain_relay(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    js = nc.jetstream()
    await put_node(js, service.subjects, node_record("n1"), seen_by=fleet)
    listed, _ = await call(nc, prefix, "node.list", {})
    assert [n["node_id"] for n in listed["nodes"]] == ["n1"]

    # A real responder on the node's control subject, as the daemon's would be.
    async def on_drain(msg: Any) -> None:
        await msg.respond(b'{"v":1,"ok":true,"node_id":"n1","state":"draining"}')

    sub = await nc.subscribe(service.subjects.ctl("n1", "drain"), cb=on_drain)
    try:
        ack, _ = await call(nc, prefix, "node.drain", {"v": 1, "node_id": "n1"})
        assert ack == {"v": 1, "ok": True, "message": "draining"}
    finally:
        await sub.unsubscribe()
    service.s.command_timeout = 0.5
    _, headers = await call(nc, prefix, "node.resume", {"v": 1, "node_id": "n1"})
    assert headers["Nats-Service-Error-Code"] == "503"


async def test_submit_rate_limit_is_429(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    service.limiter = TenantLimiter(rate=0.001, burst=5)
    await put_node(nc.jetstream(), service.subjects, node_record("n1"), seen_by=fleet)
    codes = []
    for i in range(7):
        _, headers = await call(
            nc, prefix, "job.submit", {"v": 1, "job": job(f"r{i}", tenant="t1")}
        )
        codes.append(headers.get("Nats-Service-Error-Code", "ok"))
    assert codes == ["ok"] * 5 + ["429", "429"]
    _, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("other", tenant="t2")})
    assert "Nats-Service-Error-Code" not in headers


def test_token_bucket_refills() -> None:
    lim = TenantLimiter(rate=1.0, burst=2)
    assert [lim.allow("a", 0.0) for _ in range(3)] == [True, True, False]
    assert lim.allow("a", 1.5) is True
    assert encode(api.AckReply(ok=True))


async def test_cancel_running_job_asks_its_node(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    subjects = service.subjects
    await put_node(nc.jetstream(), subjects, node_record("n1", running=["run-1"]), seen_by=fleet)
    asked: list[bytes] = []
    broadcast: list[bytes] = []

    async def on_cancel(msg: Any) -> None:
        asked.append(msg.data)
        await msg.respond(b'{"v":1,"ok":true,"node_id":"n1","message":"stopping run-1"}')

    async def on_all(msg: Any) -> None:
        broadcast.append(msg.data)

    subs = [
        await nc.subscribe(subjects.ctl("n1", "cancel"), cb=on_cancel),
        await nc.subscribe(subjects.ctl("all", "cancel"), cb=on_all),
    ]
    try:
        ack, _ = await call(nc, prefix, "job.cancel", {"v": 1, "job_id": "run-1"})
        await nc.flush()
    finally:
        for sub in subs:
            await sub.unsubscribe()
    assert ack == {"v": 1, "ok": True, "message": "stopping run-1"}
    assert msgspec.json.decode(asked[0])["job_id"] == "run-1"
    assert msgspec.json.decode(broadcast[0])["verb"] == "cancel"


async def test_required_keys_without_database_refuse(
    service: ApiService, nc: NATS, prefix: str
) -> None:
    service.s.require_api_keys = True
    reply, headers = await call(nc, prefix, "node.list", {})
    assert headers["Nats-Service-Error-Code"] == "503" and "no database" in reply["message"]
    _, headers = await call(nc, prefix, "job.get", {"v": 1, "job_id": "x"})
    assert headers["Nats-Service-Error-Code"] == "503"


async def test_submit_while_the_jobs_stream_is_unavailable_is_503(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    """A broker outage (here: no stream answers the publish) is 503, retry, not a 500 bug."""
    js = nc.jetstream()
    await put_node(js, service.subjects, node_record("n1"), seen_by=fleet)
    await js.delete_stream(service.subjects.jobs_stream)
    reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("later-1")})
    assert headers["Nats-Service-Error-Code"] == "503"
    assert reply["message"] == "the broker or database is unavailable; retry"
    await ensure_topology(js, service.subjects, TopologySettings(pools=POOLS))
    reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("later-1")})
    assert "Nats-Service-Error-Code" not in headers, reply


async def test_node_list_pages_a_large_fleet(
    service: ApiService, nc: NATS, prefix: str, nats_url: str, fleet: NodeTracker
) -> None:
    """A fleet bigger than one reply is listed page by page: every node once, each page within
    the CLI's reply cap; the first page answers the empty request every release sends."""
    js = nc.jetstream()
    names = [f"n{i:04d}" for i in range(400)]
    for name in names[:-1]:
        await put_node(js, service.subjects, node_record(name))
    await put_node(js, service.subjects, node_record(names[-1]), seen_by=fleet)

    first = await nc.request(f"{prefix}.api.node.list", b'{"v":1}', timeout=10)
    page = msgspec.json.decode(first.data)
    assert page["next_after"] == page["nodes"][-1]["node_id"]
    assert len(first.data) < MAX_MESSAGE_BYTES and 0 < len(page["nodes"]) < len(names)

    async with ApiClient(NatsSettings(url=nats_url, prefix=prefix), timeout=10.0) as client:
        listed = await all_nodes(client)
    assert [n.node_id for n in listed] == names

    last = await nc.request(f"{prefix}.api.node.list", b'{"v":1,"after":"n0398"}', timeout=10)
    tail = msgspec.json.decode(last.data)  # a last page reads as a reply from before paging
    assert [n["node_id"] for n in tail["nodes"]] == ["n0399"] and "next_after" not in tail


async def test_submit_fits_on_any_node_and_refuses_naming_each_in_order(
    service: ApiService, nc: NATS, prefix: str, fleet: NodeTracker
) -> None:
    """The submit check stops at the first node that fits, wherever it is in the fleet; a refusal
    names every node's reason in node order, the same each time."""
    js = nc.jetstream()
    for name in ("c", "a", "b"):
        await put_node(js, service.subjects, node_record(name, labels={"rack": name}))
    await put_node(js, service.subjects, node_record("d", labels={"rack": "d"}), seen_by=fleet)
    assert {n.node_id for n in fleet.iter_nodes()} == {"a", "b", "c", "d"}
    for rack in ("a", "d"):
        body = {"v": 1, "job": job(f"fit-{rack}", requirements={"labels": {"rack": rack}})}
        reply, headers = await call(nc, prefix, "job.submit", body)
        assert "Nats-Service-Error-Code" not in headers and reply["job_id"] == f"fit-{rack}"
    body = {"v": 1, "job": job("nofit", requirements={"labels": {"rack": "z"}})}
    reply, _ = await call(nc, prefix, "job.submit", body)
    assert [m.split(" ")[0] for m in reply["message"].split(": ", 1)[1].split("; ")] == [
        "a",
        "b",
        "c",
        "d",
    ]
