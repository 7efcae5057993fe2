"""The question a node asks before running a redelivered job (schemas.jobend), answered from a
real jobs table over a real nats-server, and what a hostile or absent answerer does to it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control.jobend import QUERY_DECODER, JobEndResponder
from daemon.job.endquery import EndQuery
from schemas.codec import encode
from schemas.jobend import JobEndQuery
from schemas.subjects import Subjects


@pytest_asyncio.fixture
async def responder(nc: NATS, db: asyncpg.Pool, prefix: str) -> AsyncIterator[JobEndResponder]:
    r = JobEndResponder(nc, db, Subjects(prefix))
    await r.start()
    yield r
    await r.stop()


async def _job(
    db: asyncpg.Pool, job_id: str, state: str, seq: int, node: str = "n1", attempt: int = 1
) -> None:
    """A job row as ingest leaves it: its state set by `node`'s event of `attempt`."""
    event_id = f"ev-{job_id}"
    await db.execute(
        "INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, attempt, ts, body)"
        " VALUES ($1, 'acme', $2, $3, $4, $5, now(), '{}')",
        event_id, job_id, state, node, attempt,
    )  # fmt: skip
    await db.execute(
        "INSERT INTO jobs (tenant, job_id, state, stream_seq, node_id, attempts, state_event_id)"
        " VALUES ('acme', $1, $2, $3, $4, $5, $6)",
        job_id, state, seq, node, attempt, event_id,
    )  # fmt: skip


async def test_only_this_very_message_ended_counts(
    nc: NATS, db: asyncpg.Pool, prefix: str, responder: JobEndResponder
) -> None:
    ask = EndQuery(nc, Subjects(prefix), "n2")
    await _job(db, "done", "completed", 7)
    await _job(db, "broke", "failed", 8)
    await _job(db, "busy", "running", 9)
    done = await ask("acme", "done", 7, 2)
    assert done is not None and (done.ended, done.node_id, done.attempt) == ("completed", "n1", 1)
    broke = await ask("acme", "broke", 8, 2)
    assert broke is not None and broke.ended == "failed"
    for tenant, job_id, seq in [
        ("acme", "done", 70),  # the same id submitted again: a new message, it must run
        ("other", "done", 7),  # another tenant's job of that id
        ("acme", "busy", 9),  # not ended
        ("acme", "never", 1),  # never seen
    ]:
        reply = await ask(tenant, job_id, seq, 2)
        assert reply is not None and reply.ended is None, (tenant, job_id, seq)
    assert responder.answered == 6


async def test_a_lying_nodes_ending_is_not_taken(
    nc: NATS, db: asyncpg.Pool, prefix: str, responder: JobEndResponder
) -> None:
    """A node that claims an attempt nobody was handed yet, or that raced the attempt's real
    holder (whose events were then refused), cannot make the next delivery skip the job."""
    ask = EndQuery(nc, Subjects(prefix), "n2")
    # Attempt 2 "completed" by a liar while attempt 1 ran: delivery 2 is the first attempt 2.
    await _job(db, "ahead", "completed", 7, node="liar", attempt=2)
    reply = await ask("acme", "ahead", 7, 2)
    assert reply is not None and reply.ended is None
    later = await ask("acme", "ahead", 7, 3)  # once attempt 2 was really handed out, it counts
    assert later is not None and later.ended == "completed"
    # Attempt 1 claimed by a liar first: the real holder's events for it were refused.
    await _job(db, "raced", "completed", 8, node="liar", attempt=1)
    await db.execute(
        "INSERT INTO rejected_events (event_id, tenant, job_id, attempt, kind, node_id, subject,"
        " reason, payload, ts) VALUES ('r1', 'acme', 'raced', 1, 'accepted', 'n1', 's',"
        " 'not the holder', '{}', now())"
    )
    reply = await ask("acme", "raced", 8, 2)
    assert reply is not None and reply.ended is None


async def test_a_bad_question_gets_an_error_and_the_responder_goes_on(
    nc: NATS, db: asyncpg.Pool, prefix: str, responder: JobEndResponder
) -> None:
    subjects = Subjects(prefix)
    await _job(db, "done", "completed", 7)
    bad = [
        b"",
        b"not json",
        b'{"tenant": "acme"}',  # fields missing
        b'{"tenant": "a b", "job_id": "x", "stream_seq": 1, "delivery": 2}',
        b'{"tenant": "acme", "job_id": "done", "stream_seq": 7, "delivery": 1}',  # a first run
        b"x" * 10_000,
    ]
    for body in bad:
        reply = await nc.request(subjects.job_end("hostile"), body, timeout=5)
        assert b'"error"' in reply.data and b'"ended":null' in reply.data, body[:40]
    assert responder.refused == 6
    ask = EndQuery(nc, subjects, "n2")
    done = await ask("acme", "done", 7, 2)
    assert done is not None and done.ended == "completed"


async def test_no_control_plane_means_no_answer_and_the_job_runs(nc: NATS, prefix: str) -> None:
    """Nobody answers (no responders, straight away): the node runs the job, as before."""
    assert await EndQuery(nc, Subjects(prefix), "n2")("acme", "done", 7, 2) is None


async def test_a_garbled_answer_counts_as_none(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)

    async def garble(msg: Msg) -> None:
        await msg.respond(b"{not json")

    sub = await nc.subscribe(subjects.job_end_wildcard, cb=garble)
    try:
        assert await EndQuery(nc, subjects, "n2")("acme", "done", 7, 2) is None
    finally:
        await sub.unsubscribe()


def test_the_question_is_what_the_responder_reads() -> None:
    query = JobEndQuery(tenant="acme", job_id="done", stream_seq=7, delivery=2)
    assert QUERY_DECODER.decode(encode(query)) == query
