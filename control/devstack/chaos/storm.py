"""A storm of malformed messages on the submit and events subjects, as an attacker or a broken
producer would send them. Each is a JetStream publish, so the count says what the broker stored
and what it refused at publish; the fleet's own jobs must come through it untouched.

Kinds (in turn): bad JSON, JSON that is no job or event, a job whose body disagrees with its
subject, an unknown pool, an unknown priority, an extra subject token, a job of another tenant,
a tenant token that disagrees with the body, an empty body, an oversize body (over the server's
max payload), events spoofing another node's subject, events with invalid job ids, unknown event
kinds, bad bytes on an events subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable

import msgspec
from nats.aio.client import Client as NATS

from control.devstack.chaos.ledger import StormCount

Maker = Callable[[str, int, random.Random], tuple[str, bytes]]
CONCURRENCY = 64
PUBLISH_TIMEOUT_S = 5.0


def _job(job_id: str, **over: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "job_id": job_id,
        "input": "file:///nonexistent/in.mp4",
        "output": "file:///nonexistent/out.mp4",
        "operation": {"op": "probe"},
    }
    body.update(over)
    return msgspec.json.encode(body)


def _event(event_id: str, node: str, kind: str, job_id: str) -> bytes:
    return msgspec.json.encode(
        {"v": 1, "kind": kind, "event_id": event_id, "job_id": job_id, "node_id": node,
         "attempt": 1, "ts": time.time(), "reason": "storm", "error_kind": "internal",
         "final": True}
    )  # fmt: skip


MAKERS: dict[str, Maker] = {
    "bad_json": lambda p, n, r: (f"{p}.submit.cpu.normal.storm-{n}", b"{not json" + r.randbytes(8)),
    "not_a_job": lambda p, n, r: (f"{p}.submit.cpu.normal.storm-{n}", b'{"hello": "world"}'),
    "id_mismatch": lambda p, n, r: (f"{p}.submit.cpu.normal.storm-{n}", _job(f"other-{n}")),
    "unknown_pool": lambda p, n, r: (
        f"{p}.submit.nopool{n % 7}.normal.storm-{n}",
        _job(f"storm-{n}"),
    ),
    "unknown_priority": lambda p, n, r: (f"{p}.submit.cpu.urgent.storm-{n}", _job(f"storm-{n}")),
    "extra_token": lambda p, n, r: (
        f"{p}.submit.evil.cpu.normal.extra.storm-{n}",
        _job(f"storm-{n}"),
    ),
    "tenant_mismatch": lambda p, n, r: (
        f"{p}.submit.tenant-a.cpu.normal.storm-{n}",
        _job(f"storm-{n}", tenant="tenant-b"),
    ),
    "wrong_tenant": lambda p, n, r: (
        f"{p}.submit.cpu.normal.storm-{n}",
        _job(f"storm-{n}", tenant="not-yours"),
    ),
    "empty": lambda p, n, r: (f"{p}.submit.cpu.normal.storm-{n}", b""),
    "oversize": lambda p, n, r: (f"{p}.submit.cpu.normal.storm-{n}", b"x" * (2 << 20)),
    "spoofed_event": lambda p, n, r: (
        f"{p}.events.dev-1.failed",
        _event(f"storm-ev-{n}", "intruder", "failed", f"storm-{n}"),
    ),
    "bad_job_id_event": lambda p, n, r: (
        f"{p}.events.intruder.failed",
        _event(f"storm-ev-{n}", "intruder", "failed", "bad id!"),
    ),
    "unknown_kind": lambda p, n, r: (
        f"{p}.events.intruder.exploded",
        _event(f"storm-ev-{n}", "intruder", "exploded", f"s-{n}"),
    ),
    "bad_json_event": lambda p, n, r: (
        f"{p}.events.intruder.failed",
        b"\xff\xfe" + r.randbytes(16),
    ),
}


async def storm(nc: NATS, prefix: str, count: int, rng: random.Random, tally: StormCount) -> None:
    """Publish `count` malformed messages, CONCURRENCY at a time; every publish is bounded."""
    js = nc.jetstream(timeout=PUBLISH_TIMEOUT_S)
    kinds = sorted(MAKERS)
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(n: int) -> None:
        kind = kinds[n % len(kinds)]
        subject, payload = MAKERS[kind](prefix, n, rng)
        async with sem:
            tally.published += 1
            tally.by_kind[kind] = tally.by_kind.get(kind, 0) + 1
            try:
                await js.publish(subject, payload)
            except Exception:  # refused: no stream, payload too big, a stream's own check
                tally.refused += 1
                return
            tally.stored += 1
            tally.stored_by_kind[kind] = tally.stored_by_kind.get(kind, 0) + 1

    tasks = [asyncio.create_task(one(n)) for n in range(count)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
