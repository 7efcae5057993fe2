"""The outbox publisher against a real nats-server: order, Msg-Id dedup, outages, wait_sent."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg

from common.natsconn import NatsSettings, connect
from control.devstack.stack import NatsServer
from control.topology import TopologySettings, ensure_topology
from daemon.journal.outbox import OutboxPublisher
from daemon.journal.store import Journal
from schemas.events import Event, kind_of
from schemas.subjects import Subjects
from tests.support.journal import NODE, accepted, completed, progress, started


@dataclass
class Rig:
    journal: Journal
    publisher: OutboxPublisher
    reader: Client  # an independent connection, for reading the stream
    subjects: Subjects

    @property
    def js(self) -> JetStreamContext:
        return self.reader.jetstream()


@pytest.fixture
async def rig(nc: Client, nats_url: str, prefix: str, tmp_path: Path) -> AsyncIterator[Rig]:
    subjects = Subjects(prefix)
    await ensure_topology(nc.jetstream(), subjects, TopologySettings(pools=["cpu"]))
    journal = await Journal.open(tmp_path / "journal.sqlite3", subjects=subjects)
    # The daemon's own connection settings: reconnect forever.
    pub_nc = await connect(NatsSettings(url=nats_url), name="outbox-test")
    publisher = OutboxPublisher(
        journal, pub_nc.jetstream(), window=16, publish_timeout=0.5, backoff_max=0.5
    )
    rig = Rig(journal, publisher, nc, subjects)
    try:
        yield rig
    finally:  # a test may have swapped in a reopened journal and a new publisher
        await rig.publisher.stop()
        await pub_nc.close()
        await rig.journal.close()


def lifecycle(job_id: str, steps: int = 5) -> list[Event]:
    middle: list[Event] = [progress(job_id, n) for n in range(steps)]
    return [accepted(job_id), started(job_id), *middle, completed(job_id)]


async def stored(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    first, last = info.state.first_seq, info.state.last_seq
    return [await js.get_msg(stream, seq) for seq in range(first, last + 1)]


async def until(condition: Callable[[], bool], within: float = 20.0) -> None:
    for _ in range(int(within / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"condition not met within {within} s")


@asynccontextmanager
async def own_publisher(
    rig: Rig, nats_url: str, name: str, *, poll_interval: float, idle_poll_interval: float = 3600
) -> AsyncIterator[OutboxPublisher]:
    """A started publisher on the rig's journal with its own connection and polls, stopped
    (and its connection closed) on the way out."""
    pub_nc = await connect(NatsSettings(url=nats_url), name=name)
    publisher = OutboxPublisher(rig.journal, pub_nc.jetstream(), poll_interval=poll_interval,
                                idle_poll_interval=idle_poll_interval)  # fmt: skip
    try:
        publisher.start()
        yield publisher
    finally:
        await publisher.stop()
        await pub_nc.close()


async def stream_ids(rig: Rig) -> list[str | None]:
    """The Nats-Msg-Id of every message in the events stream, in stream order."""
    return [m.headers["Nats-Msg-Id"] if m.headers else None
            for m in await stored(rig.js, rig.subjects.events_stream)]  # fmt: skip


async def test_events_reach_the_stream_in_order_with_their_ids(rig: Rig) -> None:
    rig.publisher.start()
    recorded: list[Event] = []
    for n in range(12):  # recorded while the publisher runs: notify() wakes it
        events = lifecycle(f"o{n}")
        await rig.journal.record(events=events[:3])
        await rig.journal.record(events=events[3:])
        recorded += events
    assert await rig.publisher.flush(20)
    assert rig.journal.depth == 0 == await rig.journal.outbox_depth()

    messages = await stored(rig.js, rig.subjects.events_stream)
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [
        e.event_id for e in recorded
    ]
    assert [m.subject for m in messages] == [
        rig.subjects.events(NODE, kind_of(e)) for e in recorded
    ]
    assert rig.publisher.published == len(recorded) and rig.publisher.duplicates == 0


async def test_a_resend_after_a_crash_is_deduplicated(rig: Rig, tmp_path: Path) -> None:
    recorded = lifecycle("d1") + lifecycle("d2")
    await rig.journal.record(events=recorded)
    rig.publisher.start()
    assert await rig.publisher.flush(20)
    await rig.publisher.stop()

    # A crash between PubAck and the sent mark: the rows look unsent at the next start.
    await rig.journal.close()
    path = tmp_path / "journal.sqlite3"
    await asyncio.to_thread(_reset_sent, path)
    rig.journal = await Journal.open(path, subjects=rig.subjects)
    assert rig.journal.depth == len(recorded)
    again = OutboxPublisher(rig.journal, rig.publisher.js, window=16)
    rig.publisher = again
    again.start()
    assert await again.flush(20)
    assert again.duplicates == len(recorded)  # the server dropped every copy
    messages = await stored(rig.js, rig.subjects.events_stream)
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in messages] == [
        e.event_id for e in recorded
    ]


def _reset_sent(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("UPDATE outbox SET sent_at = NULL")


async def test_nats_outage_every_event_arrives_once_in_order(rig: Rig, nats_server: object) -> None:
    assert isinstance(nats_server, NatsServer), "needs the embedded server to stop and start it"
    rig.publisher.start()
    before = lifecycle("a1")
    await rig.journal.record(events=before)
    assert await rig.publisher.flush(20)

    await nats_server.stop()
    try:
        during: list[Event] = []
        for n in range(5):
            events = lifecycle(f"b{n}", steps=3)
            await rig.journal.record(events=events)
            during += events
        await until(lambda: rig.publisher.failures > 0)  # it tried, and kept every row
        assert not rig.publisher.healthy
        assert not await rig.publisher.wait_sent(during[-1].event_id, 0.5)
        assert rig.journal.depth == len(during)
    finally:
        await nats_server.start()

    assert await rig.publisher.wait_sent(during[-1].event_id, 30)
    assert await rig.publisher.flush(30)
    await until(lambda: rig.reader.is_connected)  # the reading client reconnects on its own
    messages = await stored(rig.js, rig.subjects.events_stream)
    ids = [m.headers and m.headers["Nats-Msg-Id"] for m in messages]
    assert ids == [e.event_id for e in before + during]  # once each, in order
    assert rig.publisher.healthy


async def test_wait_sent_returns_only_after_the_puback(rig: Rig) -> None:
    final = completed("w1")
    await rig.journal.record(events=[accepted("w1"), final])
    assert not await rig.publisher.wait_sent(final.event_id, 0.2)  # nothing publishes yet
    assert await stored(rig.js, rig.subjects.events_stream) == []

    rig.publisher.start()
    assert await rig.publisher.wait_sent(final.event_id, 20)
    messages = await stored(rig.js, rig.subjects.events_stream)  # already in the stream
    assert messages[-1].headers and messages[-1].headers["Nats-Msg-Id"] == final.event_id
    # The mark commits in the background, after the PubAck wait_sent answers at: flush waits.
    assert await rig.publisher.flush(20)
    assert await rig.journal.is_sent(final.event_id) is True
    assert await rig.publisher.wait_sent(final.event_id, 0.1)  # sent earlier: at once
    with pytest.raises(LookupError):
        await rig.publisher.wait_sent("never-recorded", 1)


async def test_an_ack_waits_for_the_puback_not_for_the_mark(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mark (sent_at) commits in the background: wait_sent answers at the PubAck while the
    mark is held back; the mark lands once let through, and publishing goes on."""
    gate, held = asyncio.Event(), asyncio.Event()
    real_mark = rig.journal.mark_sent

    async def slow_mark(seqs: object) -> None:
        held.set()
        await gate.wait()
        await real_mark(seqs)  # type: ignore[arg-type]

    monkeypatch.setattr(rig.journal, "mark_sent", slow_mark)
    first = completed("m1")
    await rig.journal.record(events=[accepted("m1"), first])
    rig.publisher.start()
    assert await rig.publisher.wait_sent(first.event_id, 20)
    await asyncio.wait_for(held.wait(), 20)
    assert await rig.journal.is_sent(first.event_id) is False  # PubAck'd, mark still held
    assert await rig.publisher.wait_sent(first.event_id, 0.1)  # and known as sent
    gate.set()
    assert await rig.publisher.flush(20)
    assert await rig.journal.is_sent(first.event_id) is True
    second = completed("m2")
    await rig.journal.record(events=[second])
    assert await rig.publisher.wait_sent(second.event_id, 20)
    assert await rig.publisher.flush(20)
    ids = [m.headers["Nats-Msg-Id"] for m in await stored(rig.js, rig.subjects.events_stream)
           if m.headers]  # fmt: skip
    assert ids[-1] == second.event_id and len(ids) == len(set(ids)) == 3


async def test_an_idle_outbox_reads_the_journal_only_when_a_commit_wakes_it(
    rig: Rig, nats_url: str
) -> None:
    """With every row sent, nothing is read until a commit adds rows (it read every
    poll_interval before: once a second on every idle node); new rows still go out at once."""
    async with own_publisher(rig, nats_url, "outbox-idle-test", poll_interval=0.01) as publisher:
        first = completed("i1")
        await rig.journal.record(events=[accepted("i1"), first])
        assert await publisher.wait_sent(first.event_id, 20)
        assert await publisher.flush(20)
        await until(lambda: rig.journal.depth == 0)
        reads = publisher.reads
        await asyncio.sleep(0.5)  # fifty poll intervals, idle
        # At most the read a poll_interval wait begun while the last mark committed ends in.
        assert publisher.reads <= reads + 1
        handed = publisher.handed
        second = completed("i2")
        await rig.journal.record(events=[second])
        assert await publisher.wait_sent(second.event_id, 20)
        assert publisher.handed > handed  # handed over by its commit, not read back


async def test_rows_a_commit_hands_over_go_out_without_reading_the_journal(
    rig: Rig, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a read found the outbox drained, what later commits add goes out as handed over:
    no read of the journal for it, and no lookup of whether a waited-for event is sent."""
    lookups: list[str] = []
    real_is_sent = rig.journal.is_sent

    async def counted_is_sent(event_id: str) -> bool | None:
        lookups.append(event_id)
        return await real_is_sent(event_id)

    monkeypatch.setattr(rig.journal, "is_sent", counted_is_sent)
    # Polls that never come due: any read below is one the hand-over failed to spare.
    async with own_publisher(
        rig, nats_url, "outbox-handover-test", poll_interval=3600
    ) as publisher:
        recorded = lifecycle("h0")
        await rig.journal.record(events=recorded)
        assert await publisher.wait_sent(recorded[-1].event_id, 20)
        assert await publisher.flush(20)
        reads, lookups[:] = publisher.reads, []
        for n in range(1, 6):
            events = lifecycle(f"h{n}")
            await rig.journal.record(events=events[:2])
            await rig.journal.record(events=events[2:])
            assert await publisher.wait_sent(events[-1].event_id, 20)
            recorded += events
        assert publisher.reads == reads and lookups == []
        assert await publisher.flush(20)
        assert await stream_ids(rig) == [e.event_id for e in recorded]  # once each, in order


async def test_rows_let_go_from_the_hand_over_are_read_back_not_lost(
    rig: Rig, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that hands over more than the hand-over holds lets it all go: the publisher,
    in step until then, reads the journal again at once instead of waiting for a poll."""
    monkeypatch.setattr("daemon.journal.outbox.FEED_MAX_ROWS", 4)
    async with own_publisher(rig, nats_url, "outbox-letgo-test", poll_interval=3600) as publisher:
        first = completed("g0")
        await rig.journal.record(events=[first])
        assert await publisher.wait_sent(first.event_id, 20)
        assert await publisher.flush(20)
        reads = publisher.reads
        many = lifecycle("g1", steps=6)  # 9 rows in one commit: over the hand-over's 4
        await rig.journal.record(events=many)
        assert await publisher.wait_sent(many[-1].event_id, 20)
        assert publisher.reads > reads
        assert await publisher.flush(20)
        assert await stream_ids(rig) == [e.event_id for e in [first, *many]]
        # In step again: the next commit is handed over.
        handed, last = publisher.handed, completed("g2")
        await rig.journal.record(events=[last])
        assert await publisher.wait_sent(last.event_id, 20)
        assert publisher.handed > handed
