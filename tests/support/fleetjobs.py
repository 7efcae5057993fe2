"""Jobs against a dev fleet for the node and rolling-upgrade tests: submit, follow, count events.

Jobs are published straight to the submit subject (any producer can), so these tests do not
depend on `flotilla submit`. Outcomes are read twice: from the control plane's jobs API and from
the events stream itself, where a job completed twice would show two `completed` events.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from common.natsconn import NatsSettings, connect
from control.cli.apiclient import ApiClient
from control.devstack.fleet import DevFleet
from control.errors import NotFound
from schemas import api
from schemas.subjects import Subjects, job_msg_id

MAX_EVENTS = 20_000


def transcode(job_id: str, src: Path, out_dir: Path) -> dict[str, Any]:
    """A real x264 transcode of `src` (a few seconds of CPU on a small clip)."""
    return {
        "v": 1,
        "job_id": job_id,
        "input": f"file://{src}",
        "output": f"file://{out_dir / (job_id + '.mp4')}",
        "operation": {"op": "transcode", "codec": "h264", "preset": "medium", "height": 240},
        "max_attempts": 3,
    }


async def nats_of(fleet: DevFleet) -> NATS:
    return await connect(NatsSettings(url=fleet.nats_url), name="test", reconnect=False)


async def submit(nc: NATS, fleet: DevFleet, spec: dict[str, Any]) -> None:
    tenant = spec.get("tenant", "default")
    subject = Subjects(fleet.prefix).submit(tenant, "cpu", "normal", spec["job_id"])
    body = msgspec.json.encode(spec)
    msg_id = job_msg_id(tenant, spec["job_id"])
    await nc.jetstream().publish(subject, body, headers={"Nats-Msg-Id": msg_id})


async def events_of(nc: NATS, fleet: DevFleet, kind: str) -> list[dict[str, Any]]:
    """Every event of `kind` on the events stream, in order (get_msg: no consumer needed)."""
    subjects = Subjects(fleet.prefix)
    js, seq, out = nc.jetstream(), 1, []
    for _ in range(MAX_EVENTS):
        try:
            msg = await js.get_msg(
                subjects.events_stream, seq=seq, subject=subjects.events("*", kind), next=True
            )
        except NotFoundError:
            break
        out.append(msgspec.json.decode(msg.data or b"{}"))
        seq = (msg.seq or seq) + 1
    return out


@dataclass
class Tally:
    """What the events stream says about a set of jobs."""

    completed: Counter[str]
    completed_on: dict[str, list[str]]
    accepted: Counter[str]
    interrupted: Counter[str]
    failed: Counter[str]

    def per_node(self) -> Counter[str]:
        return Counter(n for nodes in self.completed_on.values() for n in nodes)

    def redelivered(self) -> list[str]:
        return sorted(j for j, n in self.accepted.items() if n > 1)


async def tally(nc: NATS, fleet: DevFleet, job_ids: set[str]) -> Tally:
    done = [e for e in await events_of(nc, fleet, "completed") if e.get("job_id") in job_ids]
    on: dict[str, list[str]] = {}
    for e in done:
        on.setdefault(e["job_id"], []).append(e["node_id"])

    async def count(kind: str) -> Counter[str]:
        evs = await events_of(nc, fleet, kind)
        return Counter(e["job_id"] for e in evs if e.get("job_id") in job_ids)

    return Tally(
        Counter(e["job_id"] for e in done),
        on,
        await count("accepted"),
        await count("interrupted"),
        await count("failed"),
    )


async def until_accepted(nc: NATS, fleet: DevFleet, job_ids: set[str], limit_s: float) -> None:
    """Until the events stream holds an `accepted` event for each of `job_ids`."""
    deadline = time.monotonic() + limit_s
    missing = set(job_ids)
    while time.monotonic() < deadline:
        missing -= set((await tally(nc, fleet, missing)).accepted)
        if not missing:
            return
        await asyncio.sleep(0.5)
    raise AssertionError(f"no accepted event for {sorted(missing)} in {limit_s}s")


async def wait_finished(
    fleet: DevFleet, job_ids: set[str], limit_s: float = 240.0
) -> dict[str, api.JobInfo]:
    """Until the jobs API shows every job in a terminal state; bounded by `limit_s`."""
    deadline = time.monotonic() + limit_s
    infos: dict[str, api.JobInfo] = {}
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as client:
        while time.monotonic() < deadline:
            assert not fleet.failed(), fleet.failed()
            for job_id in sorted(job_ids - {j for j, i in infos.items() if _ended(i)}):
                try:
                    infos[job_id] = await client.call("job.get", api.JobRef(job_id=job_id),
                                                      api.JobInfo)  # fmt: skip
                except NotFound:  # not folded in yet
                    continue
            if len(infos) == len(job_ids) and all(_ended(i) for i in infos.values()):
                return infos
            await asyncio.sleep(1.0)
    states = Counter(i.state for i in infos.values())
    raise AssertionError(f"jobs not all finished in {limit_s}s: {dict(states)} of {len(job_ids)}")


def _ended(info: api.JobInfo) -> bool:
    return info.state in api.TERMINAL_STATES


async def node_list(fleet: DevFleet) -> list[api.NodeInfo]:
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as client:
        reply = await client.call("node.list", api.EmptyRequest(), api.NodeListReply)
    return reply.nodes


async def running_on(fleet: DevFleet) -> dict[str, list[str]]:
    """node id -> running job ids, from the fleet API's node list."""
    return {
        n.node_id: (n.heartbeat.running_jobs if n.heartbeat else []) for n in await node_list(fleet)
    }


async def slots_of(fleet: DevFleet, nodes: list[str], pool: str = "cpu") -> dict[str, int]:
    """node id -> its slots in `pool`, as its heartbeat reports them (each node must have one)."""
    beats = {n.node_id: n.heartbeat for n in await node_list(fleet)}
    assert all(beats.get(n) for n in nodes), f"no heartbeat from some of {nodes}: {beats}"
    return {n: b.slots.get(pool, 0) for n in nodes if (b := beats[n]) is not None}


async def until_running(fleet: DevFleet, job_ids: set[str], limit_s: float) -> dict[str, set[str]]:
    """Until every job in `job_ids` is on some node's running list; node id -> those jobs.

    Meant for jobs that cannot finish on their own (tests.support.heldmedia): once a heartbeat lists
    one, it stays there, so the answer does not depend on when each node last beat."""
    deadline = time.monotonic() + limit_s
    on: dict[str, set[str]] = {}
    while time.monotonic() < deadline:
        assert not fleet.failed(), fleet.failed()
        on = {n: job_ids & set(jobs) for n, jobs in (await running_on(fleet)).items()}
        if set().union(*on.values()) >= job_ids:
            return on
        await asyncio.sleep(0.5)
    raise AssertionError(f"not all of {sorted(job_ids)} running in {limit_s}s: {on}")


async def until_state(fleet: DevFleet, node: str, state: str, limit_s: float) -> None:
    """Until the fleet API reports `node` in `state` (say `draining`)."""
    deadline = time.monotonic() + limit_s
    seen: str | None = None
    while time.monotonic() < deadline:
        seen = next((n.state for n in await node_list(fleet) if n.node_id == node), None)
        if seen == state:
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"{node} was {seen}, not {state}, after {limit_s}s")
