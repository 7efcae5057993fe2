"""The journal names a job by (tenant, job_id): two tenants' jobs of one id are two rows, two
deliveries and two `interrupted` events; a journal of the previous schema is upgraded in place,
each old row's tenant read from its stored subject, else its spec."""

from __future__ import annotations

import re
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import aiosqlite
import msgspec

from daemon.journal.deliveries import Delivery
from daemon.journal.migrations import SCHEMA_VERSION, migrate
from daemon.journal.rows import JobUpdate, derived_event_id
from daemon.journal.store import Journal
from schemas.codec import Decoder
from schemas.events import Event, Interrupted
from tests.support.journal import accepted, completed


async def _accept(j: Journal, tenant: str, job_id: str, seq: int) -> None:
    update = JobUpdate(job_id, 1, "received", stream_seq=seq, spec="{}", tenant=tenant)
    reply = f"$JS.ACK.S.C.1.{seq}.1.0.0"
    delivery = Delivery(job_id, 1, seq, reply, time.time(), tenant)
    event = msgspec.structs.replace(accepted(job_id), event_id=f"{tenant}-acc", tenant=tenant)
    await j.record([update], [event], delivery=delivery)


async def test_two_tenants_same_job_id_are_two_attempts(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    j = await Journal.open(path)
    await _accept(j, "acme", "same", 10)
    await _accept(j, "bolt", "same", 11)
    # acme's attempt ends; bolt's is still in hand when the daemon "crashes".
    done = msgspec.structs.replace(completed("same"), event_id="acme-done", tenant="acme")
    await j.record([JobUpdate("same", 1, "succeeded", tenant="acme")], [done])
    assert await j.ended("same", 10, tenant="acme") is not None
    assert await j.ended("same", 11, tenant="bolt") is None
    assert (await j.job("same", 1, tenant="bolt")).state == "received"  # type: ignore[union-attr]
    await j.close()

    j = await Journal.open(path)
    try:
        recovered = await j.recover("node-a")
        assert [(r.tenant, r.job_id) for r in recovered] == [("bolt", "same")]
        [handback] = await j.interrupted_deliveries()
        assert (handback.tenant, handback.job_id, handback.stream_seq) == ("bolt", "same", 11)
        await j.settled("same", 1, tenant="bolt")
        assert await j.interrupted_deliveries() == []
        rows = await j.pending_outbox(100)
        [event] = [Decoder(Event).decode(r.payload) for r in rows if r.kind == "interrupted"]
        assert isinstance(event, Interrupted) and event.tenant == "bolt"
    finally:
        await j.close()


def test_interrupted_event_ids_differ_by_tenant() -> None:
    token = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
    ids = {
        derived_event_id(t, job, 1, "interrupted")
        # "-" may sit in tenants and job ids alike: none of these pairs may share an id.
        for t, job in [("a", "j"), ("b", "j"), ("", "j"), ("a-b", "c"), ("a", "b-c"), ("", "a-b-c")]
    }
    assert len(ids) == 6 and all(token.match(i) for i in ids)
    long_ids = {derived_event_id(t * 128, "j" * 128, 3, "interrupted") for t in "ab"}
    assert len(long_ids) == 2 and all(token.match(i) for i in long_ids)


def _old_rows(path: Path) -> None:
    """Rows as the schema version 2 daemon wrote them."""
    jobs = [
        # (job_id, state, stored subject, spec)
        ("v2-subject", "running", "p.jobs.cpu.normal.3.acme.v2-subject", '{"tenant": "x"}'),
        ("v1-subject", "succeeded", "p.jobs.cpu.normal.3.v1-subject", '{"tenant": "bolt"}'),
        ("no-subject", "received", None, '{"job_id": "no-subject", "tenant": "cargo"}'),
        ("nothing", "failed", None, "not json"),
        ("untold", "succeeded", None, '{"v": 1, "job_id": "untold", "input": "canary://", '
         '"operation": {"op": "canary"}}'),  # the body's tenant is the default one
    ]  # fmt: skip
    with closing(sqlite3.connect(path)) as conn, conn:
        for n, (job_id, state, subject, spec) in enumerate(jobs):
            conn.execute(
                "INSERT INTO jobs (job_id, attempt, state, subject, spec, received_at, "
                "updated_at) VALUES (?, 1, ?, ?, ?, ?, ?)",
                (job_id, state, subject, spec, time.time(), time.time()),
            )
            conn.execute(
                "INSERT INTO deliveries (job_id, attempt, stream_seq, reply, alive_at) "
                "VALUES (?, 1, ?, 'r', 1.0)",
                (job_id, n + 1),
            )


async def test_journal_of_the_previous_version_gets_tenants(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    async with aiosqlite.connect(path, isolation_level=None) as conn:
        assert await migrate(conn, upto=SCHEMA_VERSION - 1) == SCHEMA_VERSION - 1
    _old_rows(path)

    j = await Journal.open(path)  # migrates
    try:
        rows = {}
        for job_id in ("v2-subject", "v1-subject", "no-subject", "nothing", "untold"):
            tenants = ("acme", "bolt", "cargo", "default", "")
            found = [t for t in tenants if await j.job(job_id, 1, tenant=t)]
            rows[job_id] = found
        assert rows == {
            "v2-subject": ["acme"],  # the stored subject's, not the spec's
            "v1-subject": ["bolt"],  # no tenant token: the spec's
            "no-subject": ["cargo"],
            "nothing": [""],
            "untold": ["default"],
        }
        with closing(sqlite3.connect(path)) as conn:
            deliveries = conn.execute(
                "SELECT job_id, tenant FROM deliveries ORDER BY stream_seq"
            ).fetchall()
        assert deliveries == [
            ("v2-subject", "acme"), ("v1-subject", "bolt"), ("no-subject", "cargo"),
            ("nothing", ""), ("untold", "default"),
        ]  # fmt: skip
        # The rows stay usable: the attempts in hand are recovered under their tenants.
        recovered = await j.recover("node-a")
        assert sorted((r.tenant, r.job_id) for r in recovered) == [
            ("acme", "v2-subject"), ("cargo", "no-subject")
        ]  # fmt: skip
    finally:
        await j.close()
