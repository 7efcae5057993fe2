"""A node reports only on the job attempts it holds: forged events against real nats-server and
Postgres change nothing, are recorded, counted, logged and alerted on; the holder's own events
fold in any order; concurrent ingestors agree on one holder; a replay gives the same tables."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime

import asyncpg
import pytest
import pytest_asyncio
from msgspec.structs import replace
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control.alerts.rules import AlertEngine, Snapshot, rejected_events
from control.alerts.snapshot import with_db
from control.config import AlertThresholds
from control.db import queries
from control.db.holders import Rejection
from control.db.migrate import migrate
from control.devstack.stack import ExternalPostgres, PostgresServer
from control.fold import JobRow, at, fold_job
from control.ingest import Ingestor
from control.metrics import Metrics
from control.topology import ingest_consumer_config
from schemas.alerts import Alert
from schemas.codec import encode
from schemas.events import Cancelled, Event, HandedBack, JobEvent
from schemas.results import JobResult
from schemas.subjects import Subjects
from tests.support import databases
from tests.support.databases import migrated_before
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


async def drained(js: JetStreamContext, subjects: Subjects, durable: str) -> bool:
    info = await js.consumer_info(subjects.events_stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def in_order(js: JetStreamContext, subjects: Subjects, events: Sequence[Event]) -> None:
    """Publish one at a time, so the stream holds them in this order."""
    for event in events:
        await publish(js, subjects, [event])


async def ingest_all(
    js: JetStreamContext,
    db: asyncpg.Pool,
    subjects: Subjects,
    batch: int = 500,
    on_rejected: Callable[[Rejection], None] | None = None,
) -> Ingestor:
    """Run an ingestor until the shared durable has nothing left; return it for its stats."""
    ingestor = Ingestor(js, db, subjects, batch=batch, fetch_timeout=0.2, on_rejected=on_rejected)
    async with running(ingestor):
        await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
    return ingestor


def handed_back(job_id: str, node: str, attempt: int = 1, ts: float | None = None) -> HandedBack:
    return HandedBack(
        event_id=eid(), job_id=job_id, node_id=node, attempt=attempt,
        ts=time.time() if ts is None else ts, reason="no nvenc here", delay_s=1.0,
    )  # fmt: skip


def forged_result(event: Event, wall: float) -> Event:
    assert not isinstance(event, Cancelled)
    return replace(event, result=JobResult(wall_seconds=wall))


async def job(db: asyncpg.Pool, job_id: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT *, result::text AS result FROM jobs WHERE job_id = $1", job_id)
    assert row is not None, job_id
    return row


async def rejected_rows(db: asyncpg.Pool, job_id: str) -> list[asyncpg.Record]:
    return list(
        await db.fetch(
            "SELECT *, payload::text AS payload FROM rejected_events WHERE job_id = $1"
            " ORDER BY stream_seq",
            job_id,
        )
    )


def counter(m: Metrics, reason: str) -> float:
    text = generate_latest(m.registry).decode()
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "flotilla_rejected_events_total" and s.labels == {"reason": reason}:
                return float(s.value)
    raise AssertionError(f"flotilla_rejected_events_total{{reason={reason!r}}} is not exported")


async def test_a_forged_completion_from_another_node_changes_nothing(
    nc: NATS, prefix: str, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    metrics = Metrics()
    # Earlier than the real completion, with its own result: before, the first completion won.
    forged = forged_result(completed("j1", "dev-2", ts=t0 + 1.5), 99.0)
    await in_order(
        js, subjects, [accepted("j1", "dev-1", ts=t0), started("j1", "dev-1", ts=t0 + 1)]
    )
    async with migrated_pool(database_url) as db:
        await ingest_all(js, db, subjects)
        assert (await job(db, "j1"))["state"] == "running"

        await in_order(js, subjects, [forged])
        # The same event again under another message id: the broker stores it twice.
        await js.publish(
            subjects.events("dev-2", "completed"), encode(forged), headers={"Nats-Msg-Id": eid()}
        )

        def count_it(r: Rejection) -> None:
            metrics.rejected_events.labels(r.reason).inc()

        with caplog.at_level(logging.WARNING, logger="flotilla.security"):
            ingestor = await ingest_all(js, db, subjects, batch=1, on_rejected=count_it)
        row = await job(db, "j1")
        assert (row["state"], row["node_id"], row["result"]) == ("running", "dev-1", None)
        assert await count(db, "SELECT count(*) FROM job_events WHERE node_id = 'dev-2'") == 0

        [kept] = await rejected_rows(db, "j1")
        assert (kept["event_id"], kept["node_id"], kept["attempt"], kept["kind"]) == (
            forged.event_id, "dev-2", 1, "completed",
        )  # fmt: skip
        assert (kept["reason"], kept["holder"]) == ("not_holder", "dev-1")
        assert kept["subject"] == subjects.events("dev-2", "completed") and kept["stream_seq"] > 0
        assert json.loads(kept["payload"]) == json.loads(encode(forged))
        assert kept["ts"] == at(forged.ts) and kept["received_at"] is not None
        # Counted once, logged once, though it came twice.
        assert ingestor.stats.rejected == 1 and counter(metrics, "not_holder") == 1.0
        lines = [r for r in caplog.records if r.name == "flotilla.security"]
        assert len(lines) == 1 and lines[0].levelno == logging.WARNING
        assert "dev-2" in lines[0].getMessage() and "held by dev-1" in lines[0].getMessage()

        # The alert: the node whose events were rejected, within the window.
        snap = await with_db(Snapshot(), db, 900.0, 900.0)
        assert snap.rejected_by_node == {"dev-2": 1}
        assert rejected_events(snap, AlertThresholds()) == [("dev-2", 1.0, 0.0)]
        fired: list[Alert] = []

        async def sink(alert: Alert) -> None:
            fired.append(alert)

        await AlertEngine(AlertThresholds(hysteresis=1), sink).evaluate(snap)
        assert [(a.rule, a.severity, a.subject) for a in fired] == [
            ("rejected_events", "warning", "dev-2")
        ]

        # dev-1's real completion is the one stored.
        await in_order(js, subjects, [completed("j1", "dev-1", ts=t0 + 2)])
        await ingest_all(js, db, subjects)
        row = await job(db, "j1")
        assert (row["state"], row["node_id"]) == ("completed", "dev-1")
        assert json.loads(row["result"])["wall_seconds"] == 1.5


async def test_no_event_kind_from_a_never_registered_node_touches_a_held_job(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    await in_order(
        js, subjects, [accepted("j2", "dev-1", ts=t0), started("j2", "dev-1", ts=t0 + 1)]
    )
    forged: list[Event] = [
        accepted("j2", "ghost-7", ts=t0 - 5),
        started("j2", "ghost-7", ts=t0 - 4),
        progress("j2", 99.0, "ghost-7", ts=t0 + 2),
        handed_back("j2", "ghost-7", ts=t0 + 3),
        failed("j2", "forged failure", "ghost-7", ts=t0 + 4),
        Cancelled(event_id=eid(), job_id="j2", node_id="ghost-7", ts=t0 + 5),
        forged_result(completed("j2", "ghost-7", ts=t0 + 6), 99.0),
        # A node named like the control plane is still a node when it speaks on the stream.
        forged_result(completed("j2", "control", ts=t0 + 7), 98.0),
    ]
    async with migrated_pool(database_url) as db:
        await ingest_all(js, db, subjects)
        before = await job(db, "j2")
        await in_order(js, subjects, forged)
        ingestor = await ingest_all(js, db, subjects, batch=3)
        assert ingestor.stats.rejected == len(forged) and ingestor.stats.events_ingested == 0
        assert await job(db, "j2") == before
        rows = await rejected_rows(db, "j2")
        assert sorted(r["event_id"] for r in rows) == sorted(e.event_id for e in forged)
        assert {(r["holder"], r["reason"]) for r in rows} == {("dev-1", "not_holder")}
        assert await count(db, "SELECT count(*) FROM job_events WHERE job_id = 'j2'") == 2


async def test_a_decline_counts_where_nobody_accepted_and_not_where_someone_did(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    events: list[Event] = [
        # dev-3 cannot run it and hands attempt 1 back; dev-1 takes attempt 2.
        handed_back("hb", "dev-3", 1, t0),
        accepted("hb", "dev-1", 2, t0 + 1),
        completed("hb", "dev-1", 2, t0 + 2),
        # A job dev-3 cannot even decode fails at once, never accepted.
        failed("invalid", "JobSpec: missing field", "dev-3", 1, t0),
        # dev-1 holds attempt 1 here: dev-3's hand-back and failure of it are refused.
        accepted("held", "dev-1", 1, t0),
        started("held", "dev-1", 1, t0 + 1),
        handed_back("held", "dev-3", 1, t0 + 2),
        failed("held", "JobSpec: forged", "dev-3", 1, t0 + 3),
    ]
    await in_order(js, subjects, events)
    async with migrated_pool(database_url) as db:
        ingestor = await ingest_all(js, db, subjects, batch=2)
        assert (await job(db, "hb"))["state"] == "completed"
        assert (await job(db, "invalid"))["state"] == "failed"
        held = await job(db, "held")
        assert (held["state"], held["node_id"], held["last_error"]) == ("running", "dev-1", None)
        kinds = [(r["kind"], r["node_id"]) for r in await rejected_rows(db, "held")]
        assert kinds == [("handed_back", "dev-3"), ("failed", "dev-3")]
        assert ingestor.stats.rejected == 2


async def test_the_holders_events_fold_in_any_order(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time() - 50
    one: list[JobEvent] = [
        accepted("one", "dev-1", ts=t0),
        started("one", "dev-1", ts=t0 + 1),
        progress("one", 40.0, "dev-1", ts=t0 + 2),
        completed("one", "dev-1", ts=t0 + 3),
    ]
    two: list[JobEvent] = [
        accepted("two", "dev-1", ts=t0),
        started("two", "dev-1", ts=t0 + 1),
        progress("two", 40.0, "dev-1", ts=t0 + 2),
        completed("two", "dev-1", ts=t0 + 3),
    ]
    async with migrated_pool(database_url) as db:
        # In one batch: started and progress before accepted.
        await in_order(js, subjects, [one[1], one[2], one[0], one[3]])
        await ingest_all(js, db, subjects)
        # Across two batches: started and progress first, accepted in the next batch. Another
        # node's `accepted` in between finds the attempt held by dev-1's first event already.
        await in_order(js, subjects, [two[1], two[2]])
        await ingest_all(js, db, subjects)
        assert (await job(db, "two"))["state"] == "running"
        await in_order(js, subjects, [accepted("two", "dev-2", ts=t0 - 1), two[0], two[3]])
        ingestor = await ingest_all(js, db, subjects)
        assert ingestor.stats.rejected == 1
        assert [r["node_id"] for r in await rejected_rows(db, "two")] == ["dev-2"]
        assert await count(db, "SELECT count(*) FROM rejected_events WHERE job_id = 'one'") == 0
        for job_id, events in (("one", one), ("two", two)):
            row = await job(db, job_id)
            expected = JobRow(job_id=job_id, submitted_at=at(t0))
            fold_job(expected, events)
            assert (row["state"], row["node_id"], row["percent"]) == ("completed", "dev-1", 100.0)
            for column in ("started_at", "finished_at", "queued_at", "attempts", "stream_seq"):
                assert row[column] == getattr(expected, column), (job_id, column)


async def test_two_ingestors_racing_agree_on_one_holder(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    # Each ingestor reads one node's events only, so they race to claim every attempt for a
    # different node: only the database can make them agree.
    base = ingest_consumer_config(subjects, SETTINGS)
    for node in ("dev-1", "dev-2"):
        only = dataclasses.replace(
            base, durable_name=f"only-{node}", filter_subject=subjects.events(node, "*")
        )
        await js.add_consumer(subjects.events_stream, only)
    t0 = time.time()
    jobs = [f"r{i}" for i in range(150)]
    events: list[Event] = []
    for i, job_id in enumerate(jobs):
        for node, wall in (("dev-1", 1.0), ("dev-2", 2.0)):
            events += [
                accepted(job_id, node, ts=t0 + i),
                started(job_id, node, ts=t0 + i + 0.1),
                forged_result(completed(job_id, node, ts=t0 + i + 0.2), wall),
            ]
    async with migrated_pool(database_url) as db:
        one = Ingestor(js, db, subjects, batch=7, fetch_timeout=0.2, durable="only-dev-1")
        two = Ingestor(js, db, subjects, batch=11, fetch_timeout=0.2, durable="only-dev-2")

        async def both_drained() -> bool:
            return all([await drained(js, subjects, f"only-{n}") for n in ("dev-1", "dev-2")])

        async with running(one), running(two):
            await publish(js, subjects, events)
            await wait_until(both_drained, "both ingestors")
        holders = dict(await db.fetch("SELECT job_id, node_id FROM job_attempts"))
        assert sorted(holders) == sorted(jobs)
        assert one.stats.rejected + two.stats.rejected == 3 * len(jobs)
        for row in await db.fetch("SELECT job_id, node_id, result::text AS r FROM jobs"):
            holder = holders[row["job_id"]]
            assert row["node_id"] == holder
            assert json.loads(row["r"])["wall_seconds"] == (1.0 if holder == "dev-1" else 2.0)
        # Every event is either folded (the holder's) or rejected (the other node's), never both.
        kept = await db.fetch("SELECT job_id, node_id FROM job_events")
        refused = await db.fetch("SELECT job_id, node_id FROM rejected_events")
        assert len(kept) == len(refused) == 3 * len(jobs)
        assert all(holders[r["job_id"]] == r["node_id"] for r in kept)
        assert all(holders[r["job_id"]] != r["node_id"] for r in refused)


@pytest_asyncio.fixture
async def fresh_database(
    pg_server: PostgresServer | ExternalPostgres, pg_template: str
) -> AsyncIterator[str]:
    """A second database for the replay, cloned from the same template."""
    async with databases.fresh_database(pg_server, pg_template) as url:
        yield url


TABLES = {
    "jobs": "SELECT * FROM jobs ORDER BY job_id",
    "job_events": "SELECT * FROM job_events ORDER BY event_id",
    "job_attempts": "SELECT * FROM job_attempts ORDER BY job_id, attempt",
    "rejected_events": "SELECT * FROM rejected_events ORDER BY event_id",
}
#: Set by the database clock when a row is written, not by the events.
WRITE_TIMES = ("updated_at", "ingested_at", "claimed_at", "received_at")


async def tables(db: asyncpg.Pool) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for name, sql in TABLES.items():
        rows = [dict(r) for r in await db.fetch(sql)]
        out[name] = [{k: v for k, v in r.items() if k not in WRITE_TIMES} for r in rows]
    return out


def mixed_stream(t0: float) -> Sequence[Event]:
    """Honest lifecycles, declines, out-of-order arrivals and forgeries, interleaved."""
    events: list[Event] = []
    for i in range(20):
        job_id, node = f"m{i}", f"dev-{i % 3 + 1}"
        life: list[Event] = [
            accepted(job_id, node, ts=t0 + i),
            started(job_id, node, ts=t0 + i + 0.1),
            progress(job_id, 50.0, node, ts=t0 + i + 0.2),
            completed(job_id, node, ts=t0 + i + 0.3),
        ]
        if i % 4 == 0:
            life = [life[1], life[0], life[2], life[3]]
        if i % 5 == 0:
            life.insert(2, forged_result(completed(job_id, "ghost", ts=t0 + i + 0.15), 9.0))
        if i % 7 == 0:
            life = [handed_back(job_id, "dev-9", 1, t0 + i - 1)] + [
                replace(e, attempt=2)
                for e in life  # type: ignore[type-var]
            ]
        events += life
    return events


async def test_a_replay_into_a_fresh_database_gives_the_same_tables(
    nc: NATS, prefix: str, database_url: str, fresh_database: str
) -> None:
    js, subjects = await setup(nc, prefix)
    stream = mixed_stream(time.time() - 100)
    await in_order(js, subjects, stream)
    async with migrated_pool(database_url) as db:
        first = await ingest_all(js, db, subjects, batch=5)
        assert first.stats.rejected == 4  # the forgeries, m0 m5 m10 m15
        original = await tables(db)
    replay = dataclasses.replace(ingest_consumer_config(subjects, SETTINGS), durable_name="again")
    await js.add_consumer(subjects.events_stream, replay)
    async with migrated_pool(fresh_database) as db:
        again = Ingestor(js, db, subjects, batch=500, fetch_timeout=0.2, durable="again")
        async with running(again):
            await wait_until(lambda: drained(js, subjects, "again"), "the replay")
        assert await tables(db) == original
    assert {r["state"] for r in original["jobs"]} == {"completed"}
    assert len(original["rejected_events"]) == 4


async def test_a_dead_letters_rerun_claims_its_attempts_afresh(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time() - 30
    await in_order(
        js, subjects, [accepted("dl", "dev-1", ts=t0), failed("dl", "boom", "dev-1", ts=t0 + 1)]
    )
    async with migrated_pool(database_url) as db:
        await ingest_all(js, db, subjects)
        # `flotilla jobs retry`: the job starts again, its attempts counted from 1.
        await db.execute(queries.RESET_FOR_RETRY, "dl", datetime.now(UTC), 60.0, "acme")
        t1 = time.time() + 0.01
        rerun: list[Event] = [
            accepted("dl", "dev-2", ts=t1),
            # dev-1's late echo of the dead run: not the new run's, ignored as before.
            started("dl", "dev-1", ts=t0 + 0.5),
            started("dl", "dev-2", ts=t1 + 0.1),
            # dev-1 on the new run's attempt 1, which dev-2 holds: refused.
            forged_result(completed("dl", "dev-1", ts=t1 + 0.15), 9.0),
            completed("dl", "dev-2", ts=t1 + 0.2),
        ]
        await in_order(js, subjects, rerun)
        ingestor = await ingest_all(js, db, subjects)
        row = await job(db, "dl")
        assert (row["state"], row["node_id"]) == ("completed", "dev-2")
        assert json.loads(row["result"])["wall_seconds"] == 1.5
        assert [r["event_id"] for r in await rejected_rows(db, "dl")] == [rerun[3].event_id]
        assert ingestor.stats.rejected == 1
        assert await db.fetchval("SELECT node_id FROM job_attempts WHERE job_id = 'dl'") == "dev-2"


# -- What a node can still lie about (README, Guarantees) ------------------------------------


async def test_a_node_that_claims_an_attempt_first_holds_it_and_the_alert_names_the_other(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    # dev-2 saw the job go by and publishes an `accepted` for attempt 1 before dev-1 (which
    # JetStream handed it to) does; its result, like any holder's, is its word.
    stolen: list[Event] = [
        accepted("steal", "dev-2", ts=t0),
        forged_result(completed("steal", "dev-2", ts=t0 + 0.5), 99.0),
    ]
    real: list[Event] = [
        accepted("steal", "dev-1", ts=t0 + 0.1),
        started("steal", "dev-1", ts=t0 + 0.2),
        completed("steal", "dev-1", ts=t0 + 1),
    ]
    await in_order(js, subjects, [*stolen, *real])
    async with migrated_pool(database_url) as db:
        ingestor = await ingest_all(js, db, subjects, batch=2)
        row = await job(db, "steal")
        assert (row["state"], row["node_id"]) == ("completed", "dev-2")
        assert json.loads(row["result"])["wall_seconds"] == 99.0
        # Detected, not silent: every event of the real holder is rejected, and alerted on.
        rows = await rejected_rows(db, "steal")
        assert [r["event_id"] for r in rows] == [e.event_id for e in real]
        assert {r["holder"] for r in rows} == {"dev-2"} and ingestor.stats.rejected == 3
        snap = await with_db(Snapshot(), db, 900.0, 900.0)
        assert rejected_events(snap, AlertThresholds()) == [("dev-1", 3.0, 0.0)]


async def test_an_attempt_number_nobody_was_handed_is_not_contested(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    t0 = time.time()
    await in_order(js, subjects, [accepted("inv", "dev-1", ts=t0), started("inv", "dev-1", ts=t0)])
    # dev-2 invents attempt 2 while dev-1 runs attempt 1: nobody else claims it.
    invented: list[Event] = [
        accepted("inv", "dev-2", attempt=2, ts=t0 + 0.1),
        forged_result(completed("inv", "dev-2", attempt=2, ts=t0 + 0.2), 99.0),
    ]
    await in_order(js, subjects, [*invented, completed("inv", "dev-1", ts=t0 + 1)])
    async with migrated_pool(database_url) as db:
        ingestor = await ingest_all(js, db, subjects)
        assert ingestor.stats.rejected == 0
        row = await job(db, "inv")
        # The earlier completion stands, as between two real attempts.
        assert (row["state"], row["node_id"]) == ("completed", "dev-2")
        assert json.loads(row["result"])["wall_seconds"] == 99.0
        # The trail shows both nodes on the job.
        nodes = await db.fetch("SELECT DISTINCT node_id FROM job_events WHERE job_id = 'inv'")
        assert sorted(r["node_id"] for r in nodes) == ["dev-1", "dev-2"]


@pytest_asyncio.fixture
async def empty_database(pg_server: PostgresServer | ExternalPostgres) -> AsyncIterator[str]:
    """A database with no schema (not cloned from the migrated template)."""
    if isinstance(pg_server, PostgresServer):
        await pg_server.start()  # as database_url does: survive a test that left it stopped
    name = "m_" + secrets.token_hex(6)
    await pg_server.create_database(name)
    try:
        yield pg_server.dsn(name)
    finally:
        await pg_server.drop_database(name)


async def test_the_migration_gives_attempts_under_way_their_first_reporter(
    empty_database: str,
) -> None:
    t = datetime.now(UTC)
    rows = [  # event_id, kind, node, attempt, stream seq
        ("e2", "started", "dev-1", 1, 6),
        ("e3", "completed", "dev-2", 1, 7),  # another node, later: not the holder
        ("e1", "accepted", "dev-1", 1, 5),
        ("e4", "handed_back", "dev-3", 2, 9),
        ("w1", "webhook", "control", 1, None),  # written by the control plane: no claim
    ]
    await migrated_before(empty_database, 3)  # the database as the previous release left it
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.executemany(
            "INSERT INTO job_events (event_id, job_id, kind, node_id, attempt, ts, body,"
            " stream_seq) VALUES ($1, 'old', $2, $3, $4, $5, '{}', $6)",
            [(e, kind, node, attempt, t, seq) for e, kind, node, attempt, seq in rows],
        )
    finally:
        await conn.close()
    assert (await migrate(empty_database))[0] == 3
    conn = await asyncpg.connect(empty_database)
    try:
        claims = await conn.fetch(
            "SELECT job_id, attempt, node_id, event_id, kind FROM job_attempts ORDER BY attempt"
        )
    finally:
        await conn.close()
    assert [tuple(c) for c in claims] == [
        ("old", 1, "dev-1", "e1", "accepted"), ("old", 2, "dev-3", "e4", "handed_back"),
    ]  # fmt: skip
