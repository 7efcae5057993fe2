"""The events puller against a real nats-server: batches as big as asked, what is there without
waiting for a whole request's life, the next batch fetched ahead, and what was never taken
handed back on close."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from control.eventpull import EventPuller
from control.ingest import Ingestor, stream_seq
from schemas.events import Event
from schemas.subjects import Subjects
from tests.support.ingest import (
    count,
    lifecycle,
    migrated_pool,
    publish,
    running,
    setup,
    wait_until,
)


def puller(
    js: JetStreamContext, subjects: Subjects, batch: int, expires: float = 30.0
) -> EventPuller:
    return EventPuller(js, subjects.events_stream, subjects.ingest_consumer,
                       batch=batch, expires=expires, max_wait=0.05)  # fmt: skip


def events(n: int) -> list[Event]:
    t0 = time.time()
    return [e for i in range(n) for e in lifecycle(f"p{i}", t0 + i)]


async def test_batches_come_full_then_the_rest_without_waiting_out_the_request(
    nc: NATS, prefix: str
) -> None:
    js, subjects = await setup(nc, prefix)
    await publish(js, subjects, events(5))  # 20 messages
    p = puller(js, subjects, batch=8)
    await p.start()
    try:
        # The request lives 30 s; the last 4 come as soon as max_wait has passed, not then.
        sizes = [len(await asyncio.wait_for(p.take(), 10)) for _ in range(3)]
        assert sizes == [8, 8, 4]
    finally:
        await publish(js, subjects, events(1))  # fills the open request: close need not wait
        await p.close()


async def test_the_next_batch_is_fetched_ahead_and_handed_back_on_close(
    nc: NATS, prefix: str
) -> None:
    js, subjects = await setup(nc, prefix)
    await publish(js, subjects, events(4))  # 16 messages
    first = puller(js, subjects, batch=5)
    await first.start()
    taken = await first.take()
    assert len(taken) == 5

    async def fetched_ahead() -> bool:
        return len(first.buffered()) == 5

    await wait_until(fetched_ahead, "the next batch")
    left = await first.close()
    assert len(left) == 5
    for msg in left:
        await msg.nak()
    for msg in taken:
        await msg.ack()
    # Handed back: another puller gets them now (delivered twice), not after ack_wait.
    second = puller(js, subjects, batch=16, expires=0.5)
    await second.start()
    try:
        again: list[Msg] = []
        while len(again) < 11:
            got = await asyncio.wait_for(second.take(), 10)
            assert got, "the handed-back messages did not come"
            again += got
        redelivered = [m for m in again if m.metadata.num_delivered == 2]
        assert sorted(stream_seq(m) for m in redelivered) == sorted(stream_seq(m) for m in left)
        for msg in again:
            await msg.ack()
    finally:
        await second.close()


async def test_nothing_to_take_is_an_empty_batch(nc: NATS, prefix: str) -> None:
    js, subjects = await setup(nc, prefix)
    p = puller(js, subjects, batch=10, expires=0.2)
    await p.start()
    try:
        assert await asyncio.wait_for(p.take(), 10) == []
        # A request that expired is replaced: what comes later is still taken.
        await publish(js, subjects, events(1))
        got: list[object] = []
        for _ in range(50):
            got += await asyncio.wait_for(p.take(), 10)
            if len(got) == 4:
                break
        assert len(got) == 4
    finally:
        await p.close()


async def test_stream_sequence_is_read_from_the_ack_subject(nc: NATS, prefix: str) -> None:
    js, subjects = await setup(nc, prefix)
    await publish(js, subjects, events(4))  # two batches: nothing left for close to wait on
    p = puller(js, subjects, batch=8)
    await p.start()
    try:
        msgs = await asyncio.wait_for(p.take(), 10)
        assert [stream_seq(m) for m in msgs] == [m.metadata.sequence.stream for m in msgs]
        assert [stream_seq(m) for m in msgs] == list(range(1, 9))
    finally:
        await p.close()


async def test_what_a_stopped_ingestor_fetched_ahead_is_taken_at_once_by_the_next(
    nc: NATS, prefix: str, database_url: str
) -> None:
    """Stopping hands back (naks) what was fetched ahead, so the next ingestor gets it now
    rather than after ack_wait (60 s)."""
    js, subjects = await setup(nc, prefix)
    await publish(js, subjects, events(50))
    async with migrated_pool(database_url) as db:
        first = Ingestor(js, db, subjects, batch=20, fetch_timeout=0.2)
        async with running(first):

            async def some() -> bool:
                return first.stats.events_ingested >= 20

            await wait_until(some, "a first batch")
        assert first.stats.events_ingested < 200
        async with running(Ingestor(js, db, subjects, batch=20, fetch_timeout=0.2)):

            async def drained() -> bool:
                info = await js.consumer_info(subjects.events_stream, subjects.ingest_consumer)
                return bool(info.num_pending == 0 and info.num_ack_pending == 0)

            # Well within ack_wait: only a hand-back frees the messages fetched ahead this soon.
            await wait_until(drained, "the rest, the handed-back ones included", within=30)
        assert await count(db, "SELECT count(*) FROM job_events") == 200


async def test_a_refused_pull_is_asked_again_only_after_a_pause(
    nc: NATS, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No such consumer (yet): the server refuses each request at once; the puller says so and
    waits before asking again instead of asking in a tight loop."""
    js, subjects = await setup(nc, prefix)
    p = EventPuller(js, subjects.events_stream, "not-there", batch=8, expires=1.0, max_wait=0.05)
    await p.start()
    try:
        with caplog.at_level(logging.WARNING, logger="flotilla.ingest"):
            assert await asyncio.wait_for(p.take(), 10) == []
    finally:
        await p.close()
    refusals = [r for r in caplog.records if "ingest pull refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 5  # one request per pause (0.5 s) in the take's 1 s
