"""The journal's record of each attempt's JetStream delivery, against real SQLite files: which
attempt of a stream message ended (and how), which interrupted attempts a restart may hand back,
and that deliveries are pruned with their attempts."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.journal.deliveries import Delivery
from daemon.journal.rows import JobUpdate
from daemon.journal.store import Journal
from schemas.events import Failed
from tests.support.journal import accepted, cancelled, completed


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "journal.sqlite3")
    try:
        yield j
    finally:
        await j.close()


async def accept(j: Journal, job_id: str, attempt: int, seq: int) -> None:
    update = JobUpdate(job_id, attempt, "received", stream_seq=seq, spec="{}")
    reply = f"$JS.ACK.S.C.{attempt}.{seq}.{attempt}.0.0"
    delivery = Delivery(job_id, attempt, seq, reply, time.time())
    await j.record([update], [accepted(job_id, attempt)], delivery=delivery)


async def test_a_terminal_event_marks_its_attempt_ended_for_that_message_only(
    journal: Journal,
) -> None:
    await accept(journal, "a", 1, seq=10)
    assert await journal.ended("a", 10) is None  # running: not ended
    done = completed("a", 1)
    await journal.record([JobUpdate("a", 1, "succeeded")], [done])
    ended = await journal.ended("a", 10)
    assert ended is not None and (ended.attempt, ended.event_id) == (1, done.event_id)
    assert ended.kind == "completed"
    # A failure that will be retried ends the attempt, not the job: a redelivery runs it.
    await accept(journal, "r", 1, seq=20)
    retried = Failed(event_id="r-1-failed", job_id="r", node_id="n", attempt=1, ts=time.time(),
                     reason="timeout", error_kind="timeout", final=False)  # fmt: skip
    await journal.record([JobUpdate("r", 1, "retrying")], [retried])
    assert await journal.ended("r", 20) is None
    # The same job id stored again later (a new message, another sequence) is a new job.
    assert await journal.ended("a", 11) is None
    await accept(journal, "b", 1, seq=12)
    stop = cancelled("b", 1)
    await journal.record([JobUpdate("b", 1, "cancelled")], [stop])
    ended_b = await journal.ended("b", 12)
    assert ended_b is not None and ended_b.kind == "cancelled"


async def test_only_attempts_recovery_interrupted_are_handed_back_once(journal: Journal) -> None:
    await accept(journal, "crashed", 1, seq=1)
    await accept(journal, "drained", 1, seq=2)
    await journal.record([JobUpdate("drained", 1, "interrupted")])  # naked by the live daemon
    await accept(journal, "done", 1, seq=3)
    await journal.record([JobUpdate("done", 1, "succeeded")], [completed("done", 1)])
    assert [r.job_id for r in await journal.recover("n")] == ["crashed"]
    pending = await journal.interrupted_deliveries()
    assert [(d.job_id, d.stream_seq) for d in pending] == [("crashed", 1)]
    assert pending[0].reply.startswith("$JS.ACK.S.C.")
    await journal.settled("crashed", 1)
    assert await journal.interrupted_deliveries() == []


async def test_alive_moves_the_lease_and_prune_takes_deliveries_with_their_attempts(
    journal: Journal,
) -> None:
    await accept(journal, "p", 1, seq=5)
    await journal.alive("p", 1, 1234.5)
    await journal.recover("n")
    assert [d.alive_at for d in await journal.interrupted_deliveries()] == [1234.5]
    await journal.prune(0.0)  # the interrupted attempt is finished and older than 0 s
    assert await journal.interrupted_deliveries() == []
    assert await journal.job("p", 1) is None
    rows = await journal._rows("SELECT COUNT(*) FROM deliveries")
    assert rows[0][0] == 0


async def test_a_settled_mark_that_may_be_lost_rides_along_and_commits_by_close(
    tmp_path: Path,
) -> None:
    """A confirmed ack's mark (durable=False) is not waited for: it commits with the next
    commit, and a journal that closes first commits it before closing."""
    path = tmp_path / "settle.sqlite3"
    j = await Journal.open(path, defer_s=3600)  # it can only ride along or commit at close
    try:
        for job_id, seq in (("x", 1), ("y", 2)):
            await accept(j, job_id, 1, seq=seq)
            await j.record([JobUpdate(job_id, 1, "succeeded")], [completed(job_id, 1)],
                           settles=False)  # fmt: skip
        before = j.transactions
        await j.settled("x", 1, durable=False)
        assert j.transactions == before  # returned without a commit of its own
        await j.record([JobUpdate("z", 1, "received", spec="{}")])
        assert j.transactions == before + 1
        assert [u.delivery.job_id for u in await j.unsettled_ends()] == ["y"]
        await j.settled("y", 1, durable=False)
    finally:
        await j.close()
    again = await Journal.open(path)
    try:
        assert await again.unsettled_ends() == []
    finally:
        await again.close()
