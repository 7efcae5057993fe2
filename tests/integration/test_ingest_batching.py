"""However the stream is cut into batches (one event at a time, small batches in flight two at a
time, one big batch), ingest leaves the same tables: duplicates, out-of-order events, forgeries,
declines and undecodable messages included. Real nats-server and Postgres."""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Sequence

import asyncpg
from msgspec.structs import replace
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from control.devstack.stack import ExternalPostgres, PostgresServer
from control.ingest import Ingestor
from control.topology import ingest_consumer_config
from schemas.codec import encode
from schemas.events import Event, HandedBack, kind_of
from schemas.results import JobResult
from schemas.subjects import Subjects
from tests.support import databases
from tests.support.ingest import (
    SETTINGS,
    accepted,
    completed,
    count,
    eid,
    failed,
    migrated_pool,
    progress,
    publish,
    running,
    setup,
    started,
    wait_until,
)

TABLES = {
    "jobs": "SELECT *, result::text AS result, spec::text AS spec FROM jobs ORDER BY job_id",
    "job_events": "SELECT * FROM job_events ORDER BY event_id",
    "job_attempts": "SELECT * FROM job_attempts ORDER BY job_id, attempt",
    "rejected_events": "SELECT * FROM rejected_events ORDER BY event_id",
    "bad_events": "SELECT * FROM bad_events ORDER BY stream_seq",
}
#: Set by the database clock when a row is written, not by the events.
WRITE_TIMES = ("updated_at", "ingested_at", "claimed_at", "received_at")


async def tables(db: asyncpg.Pool) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for name, sql in TABLES.items():
        rows = [dict(r) for r in await db.fetch(sql)]
        out[name] = [{k: v for k, v in r.items() if k not in WRITE_TIMES} for r in rows]
    return out


def stream(t0: float) -> list[Event]:
    """Lifecycles with their events shuffled, a second attempt after a decline, progress
    reports, failures, and a forged `completed` from a node that never held the job."""
    rng = random.Random(7)
    events: list[Event] = []
    for i in range(40):
        job_id, node, t = f"b{i}", f"n{i % 4}", t0 + i
        life: list[Event] = [
            accepted(job_id, node, ts=t),
            started(job_id, node, ts=t + 0.1),
            progress(job_id, 30.0, node, ts=t + 0.2),
            progress(job_id, 60.0, node, ts=t + 0.3),
        ]
        if i % 3 == 0:
            life.append(failed(job_id, f"exit {i}", node, ts=t + 0.4))
        else:
            life.append(completed(job_id, node, ts=t + 0.4))
        if i % 5 == 0:
            life.insert(2, replace(completed(job_id, "ghost", ts=t + 0.15),
                                   result=JobResult(wall_seconds=9.0)))  # fmt: skip
        if i % 7 == 0:
            decline = HandedBack(event_id=eid(), job_id=job_id, tenant="acme", node_id="n9",
                                 attempt=1, ts=t - 1, reason="busy", delay_s=1.0)  # fmt: skip
            life = [decline, *(replace(e, attempt=2) for e in life)]
        rng.shuffle(life)
        events += life
    return events


async def publish_mixed(js: JetStreamContext, subjects: Subjects, events: Sequence[Event]) -> int:
    """Publish one at a time (the stream keeps this order), each tenth event twice (the second
    copy without a message id, as a redelivered outbox entry can be) and, now and then, a
    message no decoder accepts. Returns how many messages are bad."""
    bad = 0
    for n, event in enumerate(events):
        await publish(js, subjects, [event])
        if n % 10 == 0:
            await js.publish(subjects.events(event.node_id, kind_of(event)), encode(event))
        if n % 37 == 0:
            await js.publish(subjects.events("n1", "progress"), b"{not json")
            bad += 1
    return bad


async def drained(js: JetStreamContext, subjects: Subjects, durable: str) -> bool:
    info = await js.consumer_info(subjects.events_stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def ingest_into(
    js: JetStreamContext, subjects: Subjects, dsn: str, batch: int
) -> dict[str, list[dict[str, object]]]:
    durable = f"batch-{batch}"
    config = dataclasses.replace(ingest_consumer_config(subjects, SETTINGS), durable_name=durable)
    await js.add_consumer(subjects.events_stream, config)
    async with migrated_pool(dsn) as db:
        ingestor = Ingestor(js, db, subjects, batch=batch, fetch_timeout=0.2, durable=durable)
        async with running(ingestor):
            await wait_until(lambda: drained(js, subjects, durable), f"batches of {batch}")
        return await tables(db)


async def test_any_batching_of_a_mixed_stream_gives_the_same_tables(
    nc: NATS,
    prefix: str,
    database_url: str,
    pg_server: PostgresServer | ExternalPostgres,
    pg_template: str,
) -> None:
    js, subjects = await setup(nc, prefix)
    events = stream(time.time() - 100)
    bad = await publish_mixed(js, subjects, events)
    one_by_one = await ingest_into(js, subjects, database_url, 1)
    # The shape of the stream made it through: every kind of event is there to compare.
    assert len(one_by_one["job_events"]) + len(one_by_one["rejected_events"]) == len(events)
    assert len(one_by_one["rejected_events"]) >= 8 and len(one_by_one["bad_events"]) == bad
    assert {j["state"] for j in one_by_one["jobs"]} == {"completed", "failed"}
    for batch in (7, 500):
        async with databases.fresh_database(pg_server, pg_template) as dsn:
            assert await ingest_into(js, subjects, dsn, batch) == one_by_one, batch


async def test_an_old_nodes_event_finds_the_tenant_of_the_batch_just_before(
    nc: NATS, prefix: str, database_url: str
) -> None:
    """A batch with tenant-less events waits for the batch in flight before it to commit: the
    job that batch creates is where the tenant is found."""
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    events: list[Event] = []
    for i in range(20):
        events += [accepted(f"old-{i}", ts=t0), completed(f"old-{i}", ts=t0 + 1, tenant="")]
    await publish(js, subjects, events)
    async with migrated_pool(database_url) as db:
        async with running(Ingestor(js, db, subjects, batch=1, fetch_timeout=0.2)):
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
        rows = await db.fetch("SELECT DISTINCT tenant, state FROM jobs")
        assert [tuple(r) for r in rows] == [("acme", "completed")]
        assert await count(db, "SELECT count(*) FROM jobs") == 20
