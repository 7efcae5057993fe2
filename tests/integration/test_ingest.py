"""Ingest against real nats-server and Postgres: idempotent, order-proof, shared, outage-proof."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import asyncpg
from msgspec.structs import replace
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from common.natsconn import sync_subscriptions
from control.api.updates import publish_updates
from control.devstack.stack import ExternalPostgres, PostgresServer
from control.fold import JobRow, at, fold_job
from control.ingest import Ingestor
from control.retention import prune_events
from control.topology import ingest_consumer_config
from schemas.codec import encode
from schemas.events import (
    CapabilitiesChanged,
    EncoderHealth,
    Event,
    JobEvent,
    NodeStateChanged,
)
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects
from tests.support.ingest import (
    SETTINGS,
    accepted,
    completed,
    count,
    eid,
    failed,
    job_spec,
    lifecycle,
    migrated_pool,
    node_record,
    progress,
    publish,
    running,
    setup,
    started,
    wait_until,
)


async def events_in(db: asyncpg.Pool, n: int) -> bool:
    return await count(db, "SELECT count(*) FROM job_events") >= n


async def drained(js: JetStreamContext, subjects: Subjects, durable: str) -> bool:
    info = await js.consumer_info(subjects.events_stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_events_land_and_a_replay_changes_nothing(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    events: list[Event] = []
    for i in range(30):
        events += lifecycle(f"job-{i}", t0 + i)
    events.append(failed("job-bad", "exit code 1", ts=t0))
    await publish(js, subjects, events)
    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(js, db, subjects, batch=40, fetch_timeout=0.2)
        async with running(ingestor):
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
        assert await count(db, "SELECT count(*) FROM job_events") == len(events)
        assert ingestor.stats.events_ingested == len(events) and ingestor.stats.batches >= 4
        states = dict(await db.fetch("SELECT state, count(*) FROM jobs GROUP BY state"))
        assert states == {"completed": 30, "failed": 1}
        job = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'job-7'")
        assert job["node_id"] == "n1" and job["tenant"] == "acme" and job["percent"] == 100.0
        assert job["started_at"] < job["finished_at"] and job["result"] is not None
        bad = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'job-bad'")
        assert bad["last_error"] == "exit code 1" and bad["stderr_tail"] == "last lines"

        before = await snapshot(db)
        # Replay the whole stream through a second durable: nothing may change.
        replay = dataclasses.replace(ingest_consumer_config(subjects, SETTINGS), durable_name="r")
        await js.add_consumer(subjects.events_stream, replay)
        again = Ingestor(js, db, subjects, batch=500, fetch_timeout=0.2, durable="r")
        async with running(again):
            await wait_until(lambda: drained(js, subjects, "r"), "replay")
        assert again.stats.events_ingested == 0 and again.stats.duplicates == len(events)
        assert await snapshot(db) == before


async def snapshot(db: asyncpg.Pool) -> list[list[tuple[object, ...]]]:
    tables = ("jobs ORDER BY job_id", "job_events ORDER BY event_id")
    return [[tuple(r) for r in await db.fetch(f"SELECT * FROM {t}")] for t in tables]


async def test_accepted_keeps_its_spec_and_one_without_still_folds(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t = time.time()
    events: list[Event] = [
        accepted("old", ts=t, seq=3),  # a node from before the spec travelled with `accepted`
        completed("old", ts=t + 1),
        accepted("new", ts=t, seq=4, spec=job_spec("new")),
        failed("new", "input unreadable", ts=t + 1),
        # A second attempt's `accepted` (here with another spec) keeps the first one.
        accepted("new", attempt=2, ts=t + 2, seq=4, spec=replace(job_spec("new"), tenant="x")),
    ]
    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(js, db, subjects, batch=1, fetch_timeout=0.2)
        async with running(ingestor):
            await publish(js, subjects, events[:4])
            await wait_until(lambda: events_in(db, 4), "events")
            await publish(js, subjects, events[4:])
            await wait_until(lambda: events_in(db, 5), "the second attempt")
        old = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'old'")
        assert (old["state"], old["tenant"], old["stream_seq"]) == ("completed", "acme", 3)
        assert old["spec"] is None
        new = await db.fetchrow("SELECT *, spec::text AS spec FROM jobs WHERE job_id = 'new'")
        assert (new["state"], new["operation"]) == ("failed", "probe")
        assert JOB_DECODER.decode(new["spec"]) == job_spec("new")


async def test_out_of_order_delivery_gives_the_right_final_state(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time() - 100
    first: list[JobEvent] = [accepted("ooo", "n1", 1, t0), started("ooo", "n1", 1, t0 + 1)]
    second: list[JobEvent] = [
        accepted("ooo", "n2", 2, t0 + 10),
        started("ooo", "n2", 2, t0 + 11),
        progress("ooo", 60.0, "n2", 2, t0 + 12),
        completed("ooo", "n2", 2, t0 + 13),
    ]
    stale: list[JobEvent] = [
        progress("ooo", 90.0, "n1", 1, t0 + 14)
    ]  # the first node stalled, then woke up
    arrival: list[Event] = [second[3], *stale, second[1], first[1], second[0], second[2], first[0]]
    await publish(js, subjects, arrival)
    async with migrated_pool(database_url) as db:
        # Batches of one: every event is folded into the row the previous ones left.
        ingestor = Ingestor(js, db, subjects, batch=1, fetch_timeout=0.2)
        async with running(ingestor):
            await wait_until(lambda: events_in(db, len(arrival)), "events")
        row = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'ooo'")
    expected = JobRow(job_id="ooo", submitted_at=at(arrival[0].ts))
    fold_job(expected, [*first, *second, *stale])
    assert (row["state"], row["node_id"], row["attempts"]) == ("completed", "n2", 2)
    assert row["percent"] == 100.0
    for column in ("state", "node_id", "attempts", "started_at", "finished_at", "queued_at"):
        assert row[column] == getattr(expected, column), column


async def test_two_ingestors_share_the_durable_without_duplicates(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    events = [e for i in range(300) for e in lifecycle(f"j{i}", t0 + i, node=f"n{i % 3}")]
    async with migrated_pool(database_url) as db:
        a = Ingestor(js, db, subjects, batch=50, fetch_timeout=0.2)
        b = Ingestor(js, db, subjects, batch=50, fetch_timeout=0.2)
        async with running(a), running(b):
            await publish(js, subjects, events)
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
        assert await count(db, "SELECT count(DISTINCT event_id) FROM job_events") == len(events)
        assert a.stats.events_ingested + b.stats.events_ingested == len(events)
        assert a.stats.events_ingested > 0 and b.stats.events_ingested > 0
        assert await count(db, "SELECT count(*) FROM jobs WHERE state = 'completed'") == 300


async def test_postgres_restart_under_a_stream_of_events(
    nc: NATS,
    prefix: str,
    database_url: str,
    pg_server: PostgresServer | ExternalPostgres,
) -> None:
    assert isinstance(pg_server, PostgresServer), "this test restarts the embedded Postgres"
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    events = [e for i in range(400) for e in lifecycle(f"p{i}", t0 + i)]

    async def produce() -> None:
        for start in range(0, len(events), 80):
            await publish(js, subjects, events[start : start + 80])
            await asyncio.sleep(0.1)

    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(js, db, subjects, batch=100, fetch_timeout=0.2, max_backoff=0.5)
        async with running(ingestor):
            producer = asyncio.create_task(produce())
            try:
                await wait_until(lambda: events_in(db, 1), "the first events")
                await pg_server.stop()
                await asyncio.sleep(1.5)  # events keep coming while Postgres is away
            finally:
                await pg_server.start()
            await producer
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "catch-up")
        assert ingestor.stats.db_retries > 0
        assert await count(db, "SELECT count(*) FROM job_events") == len(events)
        assert await count(db, "SELECT count(DISTINCT event_id) FROM job_events") == len(events)
        assert await count(db, "SELECT count(*) FROM jobs WHERE state = 'completed'") == 400


async def test_malformed_messages_do_not_stop_ingest(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    subject = subjects.events("n1", "progress")
    await js.publish(subject, b"not json at all")
    await js.publish(subject, b'{"v": 2, "kind": "progress"}')
    await js.publish(subjects.events("n2", "started"), encode(started("spoof", "n1")))
    # Valid for msgspec, refused by Postgres (jsonb has no NUL): isolated, not blocking.
    await js.publish(subjects.events("n1", "failed"), encode(failed("nul", "bad\x00byte")))
    good = lifecycle("fine", time.time())
    await publish(js, subjects, good)
    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(js, db, subjects, batch=100, fetch_timeout=0.2)
        async with running(ingestor):
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
        assert await count(db, "SELECT count(*) FROM job_events") == len(good)
        errors = [r["error"] for r in await db.fetch("SELECT error FROM bad_events ORDER BY 1")]
        assert len(errors) == 4 and ingestor.stats.bad_events == 4
        assert any("malformed JSON" in e for e in errors)
        assert any("version" in e for e in errors)
        assert any("does not match node" in e for e in errors)
        assert await db.fetchval("SELECT state FROM jobs WHERE job_id = 'fine'") == "completed"


async def test_old_events_are_pruned_in_batches(nc: NATS, prefix: str, database_url: str) -> None:
    js, subjects = await setup(nc, prefix)
    old = time.time() - 40 * 86400
    events: list[Event] = [*lifecycle("old-1", old), *lifecycle("old-2", old + 1)]
    events += lifecycle("new", time.time())
    await publish(js, subjects, events)
    async with migrated_pool(database_url) as db:
        async with running(Ingestor(js, db, subjects, fetch_timeout=0.2)):
            await wait_until(lambda: events_in(db, len(events)), "events")
        assert await prune_events(db, retention_days=30, batch=3) == 8
        assert await count(db, "SELECT count(*) FROM job_events") == 4
        assert await count(db, "SELECT count(*) FROM jobs") == 3  # job state outlives events


async def test_node_events_are_kept_as_events(nc: NATS, prefix: str, database_url: str) -> None:
    js, subjects = await setup(nc, prefix)
    caps = node_record("n2").capabilities
    t = time.time()
    node_events: list[Event] = [
        CapabilitiesChanged(event_id=eid(), node_id="n2", ts=t, capabilities=caps),
        EncoderHealth(event_id=eid(), node_id="n2", ts=t, encoder="h264_nvenc", healthy=False),
        NodeStateChanged(event_id=eid(), node_id="n2", ts=t + 1, state="draining"),
    ]
    await publish(js, subjects, node_events)
    async with migrated_pool(database_url) as db:
        async with running(Ingestor(js, db, subjects, fetch_timeout=0.2)):
            await wait_until(lambda: events_in(db, len(node_events)), "node events")
        rows = await db.fetch(
            "SELECT kind, job_id FROM job_events WHERE node_id = 'n2' ORDER BY kind"
        )
        assert [tuple(r) for r in rows] == [
            ("capabilities", None), ("encoder_health", None), ("node_state", None)
        ]  # fmt: skip
        assert await count(db, "SELECT count(*) FROM jobs") == 0


async def test_two_tenants_jobs_with_one_id_fold_apart(
    nc: NATS, prefix: str, database_url: str
) -> None:
    """A job is named by (tenant, job_id): acme's "same" completes on n1 while bravo's "same"
    fails on n2, and neither's events touch the other's row or count as forged."""
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    bravo: list[Event] = [
        accepted("same", "n2", ts=t0, tenant="bravo"),
        failed("same", "bad input", "n2", ts=t0 + 0.2, tenant="bravo"),
    ]
    await publish(js, subjects, [*lifecycle("same", t0, "n1", tenant="acme"), *bravo])
    async with migrated_pool(database_url) as db:
        async with running(Ingestor(js, db, subjects, batch=3, fetch_timeout=0.2)):
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
        rows = await db.fetch("SELECT tenant, state, node_id FROM jobs ORDER BY tenant")
        assert [tuple(r) for r in rows] == [("acme", "completed", "n1"), ("bravo", "failed", "n2")]
        assert await count(db, "SELECT count(*) FROM rejected_events") == 0
        per_tenant = await db.fetch(
            "SELECT tenant, count(*) FROM job_events GROUP BY tenant ORDER BY tenant"
        )
        assert [tuple(r) for r in per_tenant] == [("acme", 4), ("bravo", 2)]


async def test_events_of_nodes_older_than_the_tenant_field_find_their_job(
    nc: NATS, prefix: str, database_url: str
) -> None:
    """An older node names the tenant only in `accepted`: its other events take the tenant of
    the one job with that id, from the same batch or from Postgres; an id two tenants use
    cannot be told apart and is kept under tenant "" (and logged)."""
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    first: list[Event] = [accepted("old-1", ts=t0), accepted("old-2", ts=t0)]
    later: list[Event] = [
        completed("old-1", ts=t0 + 1, tenant=""),
        started("old-2", ts=t0 + 0.5, tenant=""),
    ]
    shared: list[Event] = [
        accepted("both", "n1", ts=t0, tenant="acme"),
        accepted("both", "n2", ts=t0, tenant="bravo"),
    ]
    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(js, db, subjects, batch=50, fetch_timeout=0.2)
        async with running(ingestor):
            await publish(js, subjects, [*first, *shared])
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "first")
            await publish(js, subjects, [*later, completed("both", "n1", ts=t0 + 1, tenant="")])
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "later")
        rows = await db.fetch("SELECT tenant, job_id, state FROM jobs ORDER BY job_id, tenant")
        assert [tuple(r) for r in rows] == [
            ("", "both", "completed"), ("acme", "both", "queued"), ("bravo", "both", "queued"),
            ("acme", "old-1", "completed"), ("acme", "old-2", "running"),
        ]  # fmt: skip


async def test_each_stored_job_event_is_copied_to_its_jobs_updates_once(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    heard: list[str] = []

    async def on_update(msg: Msg) -> None:
        heard.append(msg.subject)

    await nc.subscribe(subjects.job_updates("acme", "up-1", ">"), cb=on_update)
    await sync_subscriptions(nc)
    events = lifecycle("up-1", time.time())
    await publish(js, subjects, events)
    async with migrated_pool(database_url) as db:
        ingestor = Ingestor(
            js, db, subjects, batch=2, fetch_timeout=0.2,
            on_fresh=lambda items: publish_updates(nc, subjects, items),
        )  # fmt: skip
        async with running(ingestor):
            await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
            await ingestor.ingest([])  # an empty batch sends nothing
        # A replay of stored events (a redelivery) is not news: nothing more is sent.
        replay = await js.pull_subscribe(subjects.events_wildcard, durable=None,
                                         stream=subjects.events_stream)  # fmt: skip
        again = await replay.fetch(len(events), timeout=5)
        await ingestor.ingest(again)
    # One subscription delivers in order: once this marker is heard, so is all before it.
    await nc.publish(subjects.job_updates("acme", "up-1", "marker"), b"")

    async def marked() -> bool:
        return bool(heard) and heard[-1].endswith(".marker")

    await wait_until(marked, "the marker")
    kinds = [s.rsplit(".", 1)[-1] for s in heard]
    assert kinds == ["accepted", "started", "progress", "completed", "marker"]
