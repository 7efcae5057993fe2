"""Dead letters against real nats-server and Postgres: poison jobs, terminated jobs, retry."""

from __future__ import annotations

import contextlib
import dataclasses
import time

import asyncpg
import msgspec
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError, NotFoundError

from control.deadletters.advisories import DeadLetterNotFound, DeadLetters, retry_dead_letter
from control.deadletters.retry import H_REASON, H_SOURCE
from control.deadletters.strays import sweep_strays
from control.ingest import Ingestor
from control.topology import job_consumer_config
from schemas.codec import encode
from schemas.events import Cancelled, Event, Interrupted
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects, job_msg_id
from tests.support.ingest import (
    SETTINGS,
    accepted,
    completed,
    count,
    eid,
    failed,
    job_spec,
    migrated_pool,
    publish,
    running,
    setup,
    started,
    wait_until,
)

CONSUMER = "jobs-cpu-normal"


async def submit(js: JetStreamContext, subjects: Subjects, job_id: str) -> bytes:
    spec = job_spec(job_id)
    payload = encode(spec)
    await js.publish(
        subjects.submit(spec.tenant, "cpu", "normal", job_id),
        payload,
        headers={"Nats-Msg-Id": job_msg_id(spec.tenant, job_id), "X-Producer": "test-suite"},
    )
    return payload


async def has_rows(db: asyncpg.Pool, sql: str, *args: object) -> bool:
    return await count(db, sql, *args) > 0


async def test_a_poison_job_is_dead_lettered_and_retried(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    # A consumer that gives up after two deliveries (production: topology's max_deliver).
    await js.delete_consumer(subjects.jobs_stream, CONSUMER)
    fast = job_consumer_config(subjects, SETTINGS, "cpu", "normal")
    await js.add_consumer(
        subjects.jobs_stream, dataclasses.replace(fast, max_deliver=2, ack_wait=0.3)
    )
    payload = await submit(js, subjects, "poison-1")

    # A node that crashes on the job every time: it takes it and never acks. The advisory is
    # emitted on the pull after the last delivery.
    sub = await js.pull_subscribe_bind(CONSUMER, stream=subjects.jobs_stream)
    deliveries = 0

    async def advisory_captured() -> bool:
        nonlocal deliveries
        with contextlib.suppress(TimeoutError):
            deliveries += len(await sub.fetch(1, timeout=0.4))
        info = await js.stream_info(subjects.advisories_stream)
        return bool(info.state.messages >= 1)

    await wait_until(advisory_captured, "the max-deliveries advisory")
    assert deliveries == 2
    await sub.unsubscribe()

    async with migrated_pool(database_url) as db:
        dead = DeadLetters(js, db, subjects, fetch_timeout=0.2)
        async with running(dead):
            await wait_until(lambda: has_rows(db, "SELECT count(*) FROM dead_letters"), "dlq")
        job = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'poison-1'")
        assert (job["state"], job["dead_lettered"]) == ("failed", True)
        assert job["last_error"] == "max deliveries exceeded" and job["tenant"] == "acme"
        assert job["spec"] is not None and job["finished_at"] is not None
        kinds = await db.fetch("SELECT kind, node_id FROM job_events WHERE job_id = 'poison-1'")
        assert [tuple(k) for k in kinds] == [("failed", "control")]

        dlq = await js.get_last_msg(
            subjects.dead_letter_stream, subjects.dead_letter("acme", "poison-1")
        )
        headers = dlq.headers or {}
        assert dlq.data == payload and headers["X-Producer"] == "test-suite"
        assert headers[H_REASON] == "max deliveries exceeded"
        assert headers[H_SOURCE] == "max_deliveries"
        assert headers["Nats-Msg-Id"] == "dlq-poison-1-1"
        # Work-queue retention keeps a max-delivered message: it was deleted by hand.
        assert (await js.stream_info(subjects.jobs_stream)).state.messages == 0

        reply = await retry_dead_letter(js, subjects, "acme", "poison-1", db=db)
        assert not reply.duplicate and reply.stream == subjects.jobs_stream
        assert reply.subject == subjects.submit("acme", "cpu", "normal", "poison-1")
        again = await js.get_msg(subjects.jobs_stream, reply.seq)
        assert again.data == payload and (again.headers or {})["X-Producer"] == "test-suite"
        assert (again.headers or {})["Nats-Msg-Id"] == f"acme.poison-1.retry.{dlq.seq}"
        assert not any(k.startswith("Flotilla-Dlq-") for k in again.headers or {})
        job = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'poison-1'")
        assert (job["state"], job["dead_lettered"], job["stream_seq"]) == (
            "submitted",
            False,
            reply.seq,
        )
        assert await has_rows(db, "SELECT count(*) FROM dead_letters WHERE retried_at IS NOT NULL")

        # The new run's events count; a late echo of the dead run (attempt 2, before the
        # retry) would otherwise out-rank the new attempt 1 and show the job queued.
        t = time.time() + 0.01
        dead_run = job["resubmitted_at"].timestamp() - 1
        echo = Interrupted(event_id=eid(), job_id="poison-1", node_id="n9", attempt=2, ts=dead_run)
        run: list[Event] = [accepted("poison-1", ts=t, seq=reply.seq), echo]
        await publish(js, subjects, [*run, started("poison-1", ts=t + 0.1)])
        async with running(Ingestor(js, db, subjects, fetch_timeout=0.2)):
            await wait_until(lambda: job_state(db, "poison-1", "running"), "the re-run")
            assert await db.fetchval("SELECT attempts FROM jobs WHERE job_id = 'poison-1'") == 1
            await publish(js, subjects, [completed("poison-1", ts=t + 0.2)])
            await wait_until(lambda: job_state(db, "poison-1", "completed"), "its completion")
        # A second retry of the same dead letter is a duplicate and resets nothing.
        assert (await retry_dead_letter(js, subjects, "acme", "poison-1", db=db)).duplicate
        assert await job_state(db, "poison-1", "completed")
    with pytest.raises(DeadLetterNotFound):
        await retry_dead_letter(js, subjects, "acme", "never-dead")


async def job_state(db: asyncpg.Pool, job_id: str, state: str) -> bool:
    return bool(await db.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id) == state)


async def take(js: JetStreamContext, subjects: Subjects) -> Msg:
    sub = await js.pull_subscribe_bind(CONSUMER, stream=subjects.jobs_stream)
    try:
        [msg] = await sub.fetch(1, timeout=5)
    finally:
        await sub.unsubscribe()
    return msg


async def test_a_terminated_job_is_dead_lettered_once_ingest_knows_it_failed(
    nc: NATS, prefix: str, database_url: str
) -> None:
    js, subjects = await setup(nc, prefix)
    await submit(js, subjects, "term-1")
    await submit(js, subjects, "term-2")
    first, second = await take(js, subjects), await take(js, subjects)
    seqs = {m.subject.rsplit(".", 1)[-1]: m.metadata.sequence.stream for m in (first, second)}
    await publish(js, subjects, [accepted(j, seq=s, spec=job_spec(j)) for j, s in seqs.items()])
    async with migrated_pool(database_url) as db:
        dead = DeadLetters(js, db, subjects, fetch_timeout=0.2, wait_delay=0.2)
        async with running(dead):
            async with running(Ingestor(js, db, subjects, fetch_timeout=0.2)):
                # Kept from the `accepted` events: the control plane never read the stream.
                spec_sql = "SELECT count(*) FROM jobs WHERE spec IS NOT NULL"
                await wait_until(lambda: _at_least(db, spec_sql, 2), "specs")
            # Ingest is stopped: the node fails one job and cancels the other, then terminates.
            cancel = Cancelled(event_id=eid(), job_id="term-2", node_id="n1", ts=time.time())
            await publish(js, subjects, [failed("term-1", "input unreadable"), cancel])
            for msg in (first, second):
                await nc.publish(msg.reply, b"+TERM input unreadable")
            await wait_until(lambda: _true(dead.stats.waits >= 2), "advisories waiting on ingest")
            assert await count(db, "SELECT count(*) FROM dead_letters") == 0
            async with running(Ingestor(js, db, subjects, fetch_timeout=0.2)):
                await wait_until(lambda: _true(dead.stats.not_dead == 1), "the cancelled job")
                await wait_until(lambda: has_rows(db, "SELECT count(*) FROM dead_letters"), "dlq")
        letter = await db.fetchrow("SELECT * FROM dead_letters")
        assert (letter["job_id"], letter["source"]) == ("term-1", "terminated")
        assert letter["reason"] == "input unreadable" and letter["stream_seq"] == seqs["term-1"]
        job = await db.fetchrow("SELECT * FROM jobs WHERE job_id = 'term-1'")
        assert (job["state"], job["dead_lettered"]) == ("failed", True)
        assert await db.fetchval("SELECT state FROM jobs WHERE job_id = 'term-2'") == "cancelled"

        dlq = await js.get_last_msg(
            subjects.dead_letter_stream, subjects.dead_letter("acme", "term-1")
        )
        assert JOB_DECODER.decode(dlq.data or b"") == job_spec("term-1")
        with pytest.raises(NotFoundError):
            await js.get_last_msg(
                subjects.dead_letter_stream, subjects.dead_letter("acme", "term-2")
            )
        reply = await retry_dead_letter(js, subjects, "acme", "term-1", db=db)
        resubmitted = await js.get_msg(subjects.jobs_stream, reply.seq)
        assert msgspec.json.decode(resubmitted.data or b"")["job_id"] == "term-1"
        assert await job_state(db, "term-1", "submitted")


async def _at_least(db: asyncpg.Pool, sql: str, n: int) -> bool:
    return await count(db, sql) >= n


async def _true(value: bool) -> bool:
    return value


async def test_messages_no_consumer_can_deliver_end_as_dead_letters(
    nc: NATS, prefix: str, database_url: str
) -> None:
    """Unknown pools and priorities are refused at publish; a wildcard character as a token is
    stored untransformed, so the leader's sweep moves it to the dead letters, payload kept."""
    js, subjects = await setup(nc, prefix)
    for pool, prio in (("nopool", "normal"), ("cpu", "urgent")):
        with pytest.raises(NoStreamResponseError):
            await js.publish(f"{prefix}.submit.default.{pool}.{prio}.j-1", b"{}")
    payload = await submit(js, subjects, "kept-1")
    strays = [f"{prefix}.submit.default.cpu.normal.*", f"{prefix}.submit.default.cpu.high.>"]
    seqs = [(await js.publish(s, b'{"stray": true}')).seq for s in strays]
    async with migrated_pool(database_url) as db:
        assert await sweep_strays(js, db, subjects) == 2
        assert await sweep_strays(js, db, subjects) == 0
        for seq in seqs:
            letter = await js.get_last_msg(
                subjects.dead_letter_stream, f"{prefix}.dlq.default.stray-{seq}"
            )
            assert letter.data == b'{"stray": true}'
            headers = letter.headers or {}
            assert headers[H_SOURCE] == "stray" and "wildcard" in headers[H_REASON]
            row = await db.fetchrow(
                "SELECT state, last_error, dead_lettered FROM jobs WHERE job_id = $1",
                f"stray-{seq}",
            )
            assert row is not None and (row["state"], row["dead_lettered"]) == ("failed", True)
            with pytest.raises(NotFoundError):
                await js.get_msg(subjects.jobs_stream, seq)
    info = await js.stream_info(subjects.jobs_stream)
    assert info.state.messages == 1  # the valid job still waits for its node
    kept = await js.get_last_msg(
        subjects.jobs_stream,
        subjects.job_stored(job_spec("kept-1").tenant, "cpu", "normal", "kept-1"),
    )
    assert kept.data == payload
