"""The traffic of a run: jobs submitted through the API at the scenario's rate, an operator's
get/list/nodes requests, a watch on node states (offline detection) and on alerts.

Every request goes through `ApiClient`, as `flotilla submit`/`jobs`/`nodes` send them; each
latency is the client's wall time from request to decoded reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from common.natsconn import NatsSettings, connect
from control.cli.apiclient import ApiClient
from control.cli.nodes import MAX_NODE_PAGES, all_nodes
from control.sim.scenario import JobKind, Scenario
from schemas import api
from schemas.alerts import Alert
from schemas.codec import Decoder, encode
from schemas.jobs import JobSpec
from schemas.registry import JOB_DECODER

TENANT = "sim"
#: Requests in flight at once per kind: beyond it a request waits (and its wait is not measured).
INFLIGHT = 64
NODE_POLL_S = 1.0


#: Replies are decoded without the CLI's 256 KiB cap, so a control plane that still answered
#: node.list in one reply (before paging) is measured rather than refused.
NODE_LIST: Decoder[api.NodeListReply] = Decoder(
    api.NodeListReply, "node.list reply", max_bytes=256 << 20
)


async def node_list(client: ApiClient) -> tuple[api.NodeListReply, int]:
    """Every node through the API's node.list, page by page, and the largest page in bytes."""
    subject = f"{client.subjects.prefix}.api.node.list"
    request: api.EmptyRequest | api.NodeListRequest = api.EmptyRequest()
    nodes: list[api.NodeInfo] = []
    largest = 0
    for _ in range(MAX_NODE_PAGES):
        msg = await client.nc.request(subject, encode(request), timeout=client.timeout)
        page = NODE_LIST.decode(msg.data)
        nodes += page.nodes
        largest = max(largest, len(msg.data))
        if page.next_after is None:
            break
        request = api.NodeListRequest(after=page.next_after)
    return api.NodeListReply(nodes=nodes), largest


async def nodes_by_state(client: ApiClient) -> dict[str, int]:
    """The API's node counts by state (fleet.summary): what is left when node.list fails."""
    reply = await client.call("fleet.summary", api.EmptyRequest(), api.SummaryReply)
    return dict(reply.nodes_by_state)


@dataclass
class Latencies:
    samples: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    last_error: dict[str, str] = field(default_factory=dict)

    def add(self, verb: str, seconds: float) -> None:
        self.samples.setdefault(verb, []).append(seconds)

    def fail(self, verb: str, exc: BaseException) -> None:
        self.errors[verb] = self.errors.get(verb, 0) + 1
        self.last_error[verb] = repr(exc)[:200]


@dataclass
class Sent:
    job_id: str
    at: float
    kind: str
    confirmed: bool = False


def job_spec(job_id: str, kind: JobKind, seconds: float, root: Path) -> JobSpec:
    body = {
        "v": 1,
        "job_id": job_id,
        "tenant": TENANT,
        "input": f"file://{root / 'src' / (job_id + '.mp4')}",
        "output": f"file://{root / 'out' / (job_id + '.mp4')}",
        "operation": {"op": "transcode", "codec": "h264", "preset": "veryfast", "height": 720},
        "requirements": {"pool": kind.pool},
        "metadata": {"sim_seconds": f"{seconds:.3f}", "sim_kind": kind.name},
    }
    return JOB_DECODER.decode(msgspec.json.encode(body))


class Traffic:
    def __init__(self, scenario: Scenario, settings: NatsSettings, run_id: str, root: Path):
        self.s, self.settings, self.run_id, self.root = scenario, settings, run_id, root
        self.rng = random.Random(scenario.seed)
        self.lat = Latencies()
        self.sent: dict[str, Sent] = {}
        self.seeded_ids: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._clients: list[ApiClient] = []
        self._gates = {v: asyncio.Semaphore(INFLIGHT) for v in ("submit", "get", "list", "nodes")}

    async def open(self) -> None:
        for _ in range(2):
            client = ApiClient(self.settings, timeout=30.0)
            await client.__aenter__()
            self._clients.append(client)

    async def close(self) -> None:
        for client in self._clients:
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    async def _timed(self, verb: str, call: Callable[[], Awaitable[object]]) -> bool:
        async with self._gates[verb]:
            t = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                self.lat.fail(verb, exc)
                return False
            self.lat.add(verb, time.perf_counter() - t)
            return True

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- submits --------------------------------------------------------------------------
    async def submit_all(self) -> None:
        total = int(self.s.rate * self.s.duration_s)
        weights = [k.weight for k in self.s.jobs]
        start = time.monotonic()
        for i in range(total):
            delay = start + i / self.s.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = self.rng.choices(self.s.jobs, weights)[0]
            seconds = self.rng.uniform(kind.seconds_min, kind.seconds_max)
            job_id = f"{self.run_id}-{i:07d}"
            spec = job_spec(job_id, kind, seconds, self.root)
            self._spawn(self._submit(spec, kind.name))
        await self.drain()

    async def _submit(self, spec: JobSpec, kind: str) -> None:
        sent = Sent(spec.job_id, time.time(), kind)
        self.sent[spec.job_id] = sent
        req = api.SubmitRequest(job=spec)
        client = self._clients[0]
        sent.confirmed = await self._timed(
            "submit", lambda: client.call("job.submit", req, api.SubmitReply)
        )

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- the operator ---------------------------------------------------------------------
    async def operator(self, stop: asyncio.Event) -> None:
        a = self.s.api
        loops = [
            self._every(a.get_per_s, stop, self._get),
            self._every(a.list_per_s, stop, self._list),
            self._every(a.nodes_per_s, stop, self._nodes),
        ]
        await asyncio.gather(*loops)

    async def _every(
        self, per_s: float, stop: asyncio.Event, one: Callable[[], Awaitable[None]]
    ) -> None:
        if per_s <= 0:
            return
        start, i = time.monotonic(), 0
        while not stop.is_set():
            delay = start + i / per_s - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            i += 1
            self._spawn(one())

    async def _get(self) -> None:
        # Half the gets ask for a job of this run, half for one of the big table's.
        mine = [s.job_id for s in list(self.sent.values())[-500:] if s.confirmed]
        pool = mine if mine and (not self.seeded_ids or self.rng.random() < 0.5) else []
        tenant = TENANT if pool else "seed"
        pool = pool or self.seeded_ids
        if not pool:
            return
        ref = api.JobRef(job_id=self.rng.choice(pool), tenant=tenant)
        client = self._clients[1]
        await self._timed("get", lambda: client.call("job.get", ref, api.JobInfo))

    async def _list(self) -> None:
        states: list[str | None] = [None, "running", "completed", "queued"]
        req = msgspec.convert({"state": self.rng.choice(states), "limit": 50}, api.JobListRequest)
        client = self._clients[1]
        await self._timed("list", lambda: client.call("job.list", req, api.JobListReply))

    async def _nodes(self) -> None:
        client = self._clients[1]
        await self._timed("nodes", lambda: all_nodes(client))


@dataclass
class NodeWatch:
    """When each killed node first reads offline through the API (node.list), and when each
    alert was published."""

    settings: NatsSettings
    prefix: str
    killed: dict[str, float] = field(default_factory=dict)
    offline_at: dict[str, float] = field(default_factory=dict)
    #: "offline", or "absent" for a node no longer listed at all.
    seen_as: dict[str, str] = field(default_factory=dict)
    alerts: list[tuple[float, Alert]] = field(default_factory=list)
    polls: int = 0
    errors: int = 0
    last_error: str = ""
    reply_bytes: int = 0
    #: node.list failed: deaths are read from fleet.summary's offline count instead.
    by_count: bool = False
    offline_before: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        nc = await connect(self.settings, name="flotilla-sim-alerts", reconnect=True)
        decoder = msgspec.json.Decoder(Alert)

        async def on_alert(msg: object) -> None:
            with contextlib.suppress(Exception):
                self.alerts.append((time.time(), decoder.decode(msg.data)))  # type: ignore[attr-defined]

        sub = await nc.subscribe(f"{self.prefix}.alerts.>", cb=on_alert)
        client = ApiClient(self.settings, timeout=10.0)
        await client.__aenter__()
        try:
            while not stop.is_set():
                if self.offline_before is None:
                    with contextlib.suppress(Exception):
                        self.offline_before = (await nodes_by_state(client)).get("offline", 0)
                if self._waiting():
                    await self._poll(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), NODE_POLL_S)
        finally:
            await sub.unsubscribe()
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)
            await nc.close()

    async def _poll(self, client: ApiClient) -> None:
        if self.by_count:
            with contextlib.suppress(Exception):
                offline = (await nodes_by_state(client)).get("offline", 0)
                self.polls += 1
                self._counted(offline - (self.offline_before or 0), time.time())
            return
        try:
            reply, size = await node_list(client)
        except Exception as exc:
            self.errors, self.last_error = self.errors + 1, repr(exc)[:200]
            self.by_count = True
        else:
            self.polls += 1
            self.reply_bytes = max(self.reply_bytes, size)
            self._seen(reply, time.time())

    def _counted(self, new_offline: int, now: float) -> None:
        """Deaths in kill order: the first `new_offline` killed nodes count as seen."""
        for node in sorted(self.killed, key=lambda n: self.killed[n])[:new_offline]:
            if node not in self.offline_at:
                self.offline_at[node], self.seen_as[node] = now, "offline (count)"

    def _waiting(self) -> bool:
        return any(n not in self.offline_at for n in self.killed)

    def _seen(self, reply: api.NodeListReply, now: float) -> None:
        states = {n.node_id: n.state for n in reply.nodes}
        for node in self.killed:
            state = states.get(node, "absent")
            if node not in self.offline_at and state in ("offline", "absent"):
                self.offline_at[node], self.seen_as[node] = now, state
