"""The node journal against real SQLite files: atomicity, recovery, quarantine, group commit,
the outbox bound, pruning, migrations, and durability across SIGKILL of a writing process."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path
from typing import Any, cast

import pytest

from daemon.journal.migrations import SCHEMA_VERSION, migrate
from daemon.journal.rows import JobState, JobUpdate, derived_event_id
from daemon.journal.store import Journal
from tests.support.journal import accepted, cancelled, completed, progress, started

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    j = await Journal.open(tmp_path / "state" / "journal.sqlite3")
    try:
        yield j
    finally:
        await j.close()


def _query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


async def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Read the file through a second connection, as another process would (WAL allows it)."""
    return await asyncio.to_thread(_query, path, sql, params)


async def receive(j: Journal, job_id: str, attempt: int = 1) -> None:
    await j.job_received(
        job_id, attempt, stream_seq=7, subject=f"x.jobs.cpu.normal.0.{job_id}", pool="cpu",
        priority="normal", spec=b'{"job_id": "%s"}' % job_id.encode(),
        events=[accepted(job_id, attempt)],
    )  # fmt: skip


async def test_state_change_and_events_commit_together(journal: Journal) -> None:
    await receive(journal, "j1")
    await journal.job_transition("j1", 1, "running", events=[started("j1")], temp_paths=["/t/a"])
    row = await journal.job("j1", 1)
    assert row is not None and row.state == "running" and row.temp_paths == ["/t/a"]
    assert row.pool == "cpu" and row.stream_seq == 7 and row.started_at is not None
    kinds = [r.kind for r in await journal.pending_outbox(10)]
    assert kinds == ["accepted", "started"]
    subjects = [r.subject for r in await journal.pending_outbox(10)]
    assert subjects == ["flotilla.events.node-a.accepted", "flotilla.events.node-a.started"]

    # A state the schema refuses fails the whole transaction: no event escapes without it...
    bad = cast(JobState, "exploded")
    with pytest.raises(sqlite3.IntegrityError):
        await journal.job_transition("j1", 1, bad, events=[cancelled("j1")])
    assert (await journal.job("j1", 1)).state == "running"  # type: ignore[union-attr]
    assert await journal.is_sent("j1-1-cancelled") is None
    # ...and a bad caller batched with good ones fails alone.
    results = await asyncio.gather(
        journal.job_transition("j1", 1, bad, events=[cancelled("j1")]),
        journal.job_transition("j1", 1, "succeeded", events=[completed("j1")]),
        return_exceptions=True,
    )
    assert isinstance(results[0], sqlite3.IntegrityError) and results[1] is None
    row = await journal.job("j1", 1)
    assert row is not None and row.state == "succeeded" and row.finished_at is not None
    assert [r.kind for r in await journal.pending_outbox(10)][-1] == "completed"
    assert journal.depth == await journal.outbox_depth() == 3


async def test_commits_that_gate_an_ack_are_full_sync(journal: Journal) -> None:
    await receive(journal, "d1")
    assert journal.synchronous == "NORMAL"
    await journal.job_transition("d1", 1, "running", events=[started("d1")])
    assert journal.synchronous == "NORMAL"
    await journal.job_transition("d1", 1, "succeeded", events=[completed("d1")])
    assert journal.synchronous == "FULL"
    await journal.record(events=[progress("d1", 1)])
    assert journal.synchronous == "NORMAL"
    await journal.record(events=[cancelled("d2")])  # a terminal event alone gates an ack too
    assert journal.synchronous == "FULL"


async def test_recovery_marks_jobs_in_hand_interrupted_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = await Journal.open(path)
    for job_id, state in (("r1", "received"), ("r2", "running"), ("r3", "paused")):
        await receive(j, job_id)
        await j.job_transition(job_id, 1, cast(JobState, state))
    await receive(j, "done")
    await j.job_transition("done", 1, "succeeded", events=[completed("done")])
    await j.close()  # a crash would leave the same rows

    j = await Journal.open(path)
    try:
        recovered = await j.recover("node-a")
        assert sorted(r.job_id for r in recovered) == ["r1", "r2", "r3"]
        for job_id in ("r1", "r2", "r3"):
            row = await j.job(job_id, 1)
            assert row is not None and row.state == "interrupted" and row.finished_at is not None
        assert await j.recover("node-a") == []
        # Even if an attempt were found in hand again, its interrupted event stays single.
        await j.job_transition("r2", 1, "running")
        assert [r.job_id for r in await j.recover("node-a")] == ["r2"]
        rows = await j.pending_outbox(100)
        interrupted = sorted(r.event_id for r in rows if r.kind == "interrupted")
        assert interrupted == [derived_event_id("", f"r{n}", 1, "interrupted") for n in (1, 2, 3)]
        assert await j.running_jobs() == []
    finally:
        await j.close()


def _quick_check(path: Path) -> list[Any] | str:
    try:
        with closing(sqlite3.connect(path)) as conn, conn:
            return conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        return str(exc)


def _break_a_cell_pointer(path: Path) -> None:
    """Damage that SQLite opens fine and only quick_check reports (as rows, not an error)."""
    sound = path.read_bytes()
    for page in range(1, len(sound) // 4096):
        damaged = bytearray(sound)
        damaged[4096 * page + 8 : 4096 * page + 10] = b"\xff\x7f"  # first cell pointer
        path.write_bytes(damaged)
        found = _quick_check(path)
        if isinstance(found, list) and found != [("ok",)]:
            return
    raise AssertionError("no page whose cell pointer quick_check notices")


def _damage(path: Path, damage: str) -> None:
    if damage == "not_a_database":
        path.write_bytes(b"this is not an sqlite file " * 400)
    elif damage == "torn_pages":
        with path.open("r+b") as f:  # overwrite a run of b-tree pages in the middle
            f.seek(4096 * 3)
            f.write(b"\xa5" * 4096 * 4)
    else:
        _break_a_cell_pointer(path)


@pytest.mark.parametrize("damage", ["not_a_database", "torn_pages", "cell_pointer"])
async def test_corrupt_journal_is_quarantined(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "journal.sqlite3"
    if damage != "not_a_database":
        j = await Journal.open(path)
        await j.record(events=[progress(f"c{n}", n) for n in range(300)])
        await j.close()
    await asyncio.to_thread(_damage, path, damage)
    j = await Journal.open(path)
    try:
        assert j.quarantined is not None
        assert re.fullmatch(r"journal\.sqlite3\.corrupt-\d{8}T\d{6}(-\d+)?", j.quarantined.name)
        assert j.quarantined.exists() and path.exists()
        assert j.depth == 0 and await j.pending_outbox(10) == []
        await receive(j, "after")  # the fresh journal works
        assert (await j.job("after", 1)) is not None
    finally:
        await j.close()
    j = await Journal.open(path)  # and is sound on the next start
    assert j.quarantined is None
    await j.close()


async def test_concurrent_callers_share_transactions(journal: Journal) -> None:
    before_tx, before_ops = journal.transactions, journal.ops_committed
    callers = 200
    await asyncio.gather(
        *(journal.record(events=[progress("g", n)]) for n in range(callers)),
    )
    assert journal.ops_committed - before_ops == callers
    assert journal.transactions - before_tx < callers
    assert journal.depth == await journal.outbox_depth() == callers
    seqs = [r.event_id for r in await journal.pending_outbox(callers)]
    assert seqs == [f"g-1-progress-{n}" for n in range(callers)]  # submission order kept


async def test_close_commits_what_is_queued(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    callers = [asyncio.create_task(j.record(events=[progress("q", n)])) for n in range(50)]
    await asyncio.sleep(0)  # every caller has queued its op; none is committed yet
    await asyncio.wait_for(j.close(), 10)
    await asyncio.gather(*callers)
    assert await query(path, "SELECT COUNT(*) FROM outbox") == [(50,)]
    with pytest.raises(RuntimeError, match="closed"):
        await j.record(events=[progress("q", 99)])
    await j.close()  # idempotent


async def test_outbox_bound_drops_oldest_progress_only(tmp_path: Path) -> None:
    j = await Journal.open(tmp_path / "j.sqlite3", outbox_max_rows=100)
    try:
        await j.record(events=[accepted("b"), started("b")])
        for n in range(150):
            await j.record(events=[progress("b", n)])
        await j.record(events=[completed("b")])
        assert j.depth == await j.outbox_depth() == 100
        rows = await j.pending_outbox(1000)
        kinds = [r.kind for r in rows]
        assert kinds[:2] == ["accepted", "started"] and kinds[-1] == "completed"
        kept = [int(r.event_id.rsplit("-", 1)[1]) for r in rows if r.kind == "progress"]
        assert kept == list(range(53, 150))  # the newest progress survives, the oldest went
        assert j.dropped_progress == 53

        # Only non-droppable rows left over the bound: all kept (telemetry bound, best effort).
        await j.record(events=[cancelled(f"k{n}") for n in range(150)])
        rows = await j.pending_outbox(1000)
        assert sum(r.kind == "cancelled" for r in rows) == 150
        assert [r.kind for r in rows[:2]] == ["accepted", "started"]
        assert all(r.kind != "progress" for r in rows)
        assert j.depth == await j.outbox_depth() == 153
    finally:
        await j.close()


async def test_prune_is_bounded_and_keeps_what_is_live(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite3"
    j = await Journal.open(path)
    try:
        await j.record(events=[progress("p", n) for n in range(2500)])
        await j.mark_sent(r.seq for r in await j.pending_outbox(2500))
        await j.record(events=[progress("unsent", 1)])
        await j.record([JobUpdate(f"f{n}", 1, "succeeded") for n in range(30)])
        await receive(j, "live")

        before = j.transactions
        first = await j.prune(0.0, batch_size=1000, max_batches=2)
        assert first.outbox_rows == 2000 and first.job_rows == 30
        assert j.transactions - before == 3  # two outbox batches, one jobs batch
        second = await j.prune(0.0, batch_size=1000, max_batches=2)
        assert second.outbox_rows == 500 and second.job_rows == 0
        pending = [r.event_id for r in await j.pending_outbox(10)]
        assert pending == ["unsent-1-progress-1", "live-1-accepted"]
        assert await j.job("live", 1) is not None and await j.outbox_depth() == 2
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size == 0  # checkpoint(TRUNCATE) after pruning
        assert (await j.prune(3600.0)).outbox_rows == 0  # nothing is old enough
    finally:
        await j.close()


def _fingerprint(path: Path) -> dict[str, Any]:
    """Structure of every table and index, independent of how the SQL text was laid out."""
    out: dict[str, Any] = {}
    with closing(sqlite3.connect(path)) as conn, conn:
        objects = conn.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
        for kind, name, sql in objects:
            if kind == "table":
                out[name] = (
                    conn.execute(f"PRAGMA table_xinfo({name})").fetchall(),
                    conn.execute(f"PRAGMA index_list({name})").fetchall(),
                )
            else:
                out[name] = (
                    conn.execute(f"PRAGMA index_xinfo({name})").fetchall(),
                    " ".join((sql or "").split()),
                )
    return out


async def test_migrations_end_at_the_schema(tmp_path: Path) -> None:
    import aiosqlite

    migrated = tmp_path / "migrated.sqlite3"
    async with aiosqlite.connect(migrated, isolation_level=None) as conn:
        assert await migrate(conn) == SCHEMA_VERSION
        assert await migrate(conn) == SCHEMA_VERSION  # idempotent
    from_schema = tmp_path / "schema.sqlite3"
    sql = await asyncio.to_thread((ROOT / "daemon" / "journal" / "schema.sql").read_text)
    async with aiosqlite.connect(from_schema) as conn:
        await conn.executescript(sql)
    assert await asyncio.to_thread(_fingerprint, migrated) == await asyncio.to_thread(
        _fingerprint, from_schema
    )
    version = await query(migrated, "SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == [(str(SCHEMA_VERSION),)]


RANK = {"received": 0, "running": 1, "succeeded": 2}
EXPECTED_KINDS = {
    "received": {"accepted"},
    "running": {"accepted", "started"},
    "succeeded": {"accepted", "started", "completed"},
}


async def _run_and_kill(path: Path, run_id: str, lines_before_kill: int) -> list[list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.support.journal_crash_child", str(path), run_id,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    reported: list[list[str]] = []
    try:
        async with asyncio.timeout(30):
            while len(reported) < lines_before_kill:
                line = await proc.stdout.readline()
                assert line, f"child exited early with {await proc.wait()}"
                reported.append(line.decode().split())
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL, by this child's PID
        rest = await proc.stdout.read()  # printed before the kill: committed as well
        await proc.wait()
    reported += [line.split() for line in rest.decode().splitlines() if line.strip()]
    return reported


async def test_sigkill_during_writes_loses_no_reported_commit(tmp_path: Path) -> None:
    path = tmp_path / "crash" / "journal.sqlite3"
    for cycle in range(3):
        reported = await _run_and_kill(path, f"c{cycle}", lines_before_kill=120 + 40 * cycle)
        assert reported and all(len(parts) == 3 for parts in reported)
        j = await Journal.open(path)
        try:
            assert j.quarantined is None  # quick_check passed
            last: dict[str, str] = {}
            for job_id, state, event_id in reported:
                last[job_id] = state  # one worker per job: its lines come in state order
                assert await j.is_sent(event_id) is False, f"{event_id} lost"
            for job_id, state in last.items():
                row = await j.job(job_id, 1)
                assert row is not None and RANK[row.state] >= RANK[state]
            # Atomicity across the kill: each stored state has exactly its events.
            rows = await query(path, "SELECT job_id, state FROM jobs")
            events = await query(path, "SELECT event_id, kind FROM outbox")
            kinds: dict[str, set[str]] = {}
            for event_id, kind in events:
                kinds.setdefault(event_id.rsplit("-", 2)[0], set()).add(kind)
            for job_id, state in rows:
                assert kinds.get(job_id) == EXPECTED_KINDS[state], job_id
            assert await j.outbox_depth() == len(events) == j.depth
        finally:
            await j.close()


async def test_an_outbox_mark_rides_along_with_the_next_commit(tmp_path: Path) -> None:
    """A mark (sent_at) is bookkeeping nobody waits on: it costs no transaction of its own
    while other commits are made, and still commits in order with them."""
    # A wait far longer than the test: the mark can only commit by riding along.
    journal = await Journal.open(tmp_path / "ride.sqlite3", defer_s=3600)
    try:
        await _ride_along(journal)
    finally:
        await journal.close()


async def _ride_along(journal: Journal) -> None:
    await journal.record(events=[accepted("r1")])
    [row] = await journal.pending_outbox(10)
    before = journal.transactions
    mark = asyncio.create_task(journal.mark_sent([row.seq]))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not mark.done() and journal.transactions == before  # waiting for a ride
    await journal.record(events=[started("r1")])
    await asyncio.wait_for(mark, 5)
    assert journal.transactions == before + 1  # one commit carried both
    assert await journal.is_sent(row.event_id) is True
    assert [r.kind for r in await journal.pending_outbox(10)] == ["started"]
    assert journal.depth == await journal.outbox_depth() == 1


async def test_a_lone_outbox_mark_commits_on_its_own_soon_and_at_close(tmp_path: Path) -> None:
    """With nothing else to ride along with, a mark commits alone after its short wait; a
    journal closing meanwhile commits it before it closes."""
    path = tmp_path / "lone.sqlite3"
    j = await Journal.open(path)
    try:
        await j.record(events=[accepted("l1"), started("l1")])
        first, second = await j.pending_outbox(10)
        await asyncio.wait_for(j.mark_sent([first.seq]), 10)
        assert await j.is_sent(first.event_id) is True and j.depth == 1
        mark = asyncio.create_task(j.mark_sent([second.seq]))
        await asyncio.sleep(0)
    finally:
        await j.close()
    await asyncio.wait_for(mark, 5)
    assert await query(path, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == [(0,)]
