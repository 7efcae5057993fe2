"""Retention on real Postgres: what goes, what must stay, and a Postgres outage mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
import pytest

from control.devstack.stack import ExternalPostgres, PostgresServer
from control.retention import Policy, prune, run_pruner
from tests.support.ingest import count, wait_until

#: Every kind's limit, in days (small batches, so each kind takes several transactions).
POLICY = Policy(
    events=30, jobs=90, canary_jobs=1, rejected_events=30, webhook_deliveries=30, dead_letters=30,
    batch=2,
)  # fmt: skip

#: (tenant, job_id, state, days since it finished or None) -> whether retention deletes it.
JOBS = [
    (("acme", "old-done", "completed", 100), True),
    (("acme", "old-failed", "failed", 91), True),
    (("acme", "old-cancelled", "cancelled", 200), True),
    (("bravo", "old-done", "completed", 95), True),
    (("acme", "young-done", "completed", 89), False),
    # Unfinished jobs stay however old, even with a finished_at left behind by a bug.
    (("acme", "old-running", "running", None), False),
    (("acme", "old-submitted", "submitted", None), False),
    (("acme", "stale-queued", "queued", 120), False),
    (("canary", "c-old", "completed", 2), True),
    (("canary", "c-failed", "failed", 1.5), True),
    (("canary", "c-young", "completed", 0.5), False),
    (("canary", "c-running", "running", None), False),
    # Another tenant's job with a canary's age keeps the general limit.
    (("bravo", "two-days", "completed", 2), False),
]


async def seed(db: asyncpg.Pool) -> None:
    for (tenant, job_id, state, days), _ in JOBS:
        await db.execute(
            """
            INSERT INTO jobs (tenant, job_id, state, state_rank, submitted_at, finished_at)
            VALUES ($1, $2, $3, CASE WHEN $4::float8 IS NULL THEN 2 ELSE 4 END,
                    now() - interval '300 days',
                    now() - make_interval(secs => $4::float8 * 86400));
            """,
            tenant, job_id, state, days,
        )  # fmt: skip
        await db.execute(
            "INSERT INTO job_attempts (tenant, job_id, attempt, node_id, event_id, kind, ts)"
            " VALUES ($1, $2, 1, 'n1', $1 || '/' || $2, 'accepted', now())",
            tenant, job_id,
        )  # fmt: skip
        # A recent event: it goes with its job, not by its own age.
        await db.execute(
            "INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, ts, body)"
            " VALUES ($1 || '/' || $2, $1, $2, 'accepted', 'n1', now(), '{}')",
            tenant, job_id,
        )  # fmt: skip
    await db.execute(
        """
        INSERT INTO webhook_deliveries (tenant, job_id, url, done_at) VALUES
            ('acme', 'old-done', 'https://x/', now() - interval '1 day'),
            ('acme', 'young-done', 'https://x/', now() - interval '40 days'),
            ('acme', 'old-running', 'https://x/', NULL),
            ('bravo', 'two-days', 'https://x/', now() - interval '2 days');
        INSERT INTO rejected_events (event_id, node_id, subject, job_id, attempt, kind, reason,
                                     payload, ts, received_at) VALUES
            ('r-old', 'n9', 's', 'j', 1, 'started', 'not_holder', '{}', now(),
             now() - interval '31 days'),
            ('r-new', 'n9', 's', 'j', 1, 'started', 'not_holder', '{}', now(), now());
        INSERT INTO dead_letters (tenant, job_id, stream_seq, source, reason, created_at,
                                  retried_at) VALUES
            ('acme', 'young-done', 1, 'terminated', 'x', now() - interval '60 days',
             now() - interval '31 days'),
            ('acme', 'young-done', 2, 'terminated', 'x', now() - interval '60 days', NULL),
            ('acme', 'young-done', 3, 'terminated', 'x', now() - interval '60 days',
             now() - interval '29 days');
        """
    )
    # Workflows: an ended old one goes with its steps; an ended young one and a running one
    # (however old) stay.
    for wf, state, days in (("wf-old", "completed", 91), ("wf-young", "failed", 10),
                            ("wf-running", "running", None)):  # fmt: skip
        await db.execute(
            "INSERT INTO workflows (tenant, workflow_id, state, spec, created_at, finished_at)"
            " VALUES ('acme', $1, $2, '{}', now() - interval '300 days',"
            " now() - make_interval(secs => $3::float8 * 86400))",
            wf, state, days,
        )  # fmt: skip
        await db.execute(
            "INSERT INTO workflow_steps (tenant, workflow_id, name, position, job_id, job)"
            " VALUES ('acme', $1, 's', 0, $1 || '--s', '{}')",
            wf,
        )  # fmt: skip


async def keys(db: asyncpg.Pool, table: str) -> set[tuple[str, str]]:
    return {
        (r["tenant"], r["job_id"]) for r in await db.fetch(f"SELECT tenant, job_id FROM {table}")
    }


async def test_retention_deletes_only_what_is_finished_and_old(db: asyncpg.Pool) -> None:
    await seed(db)
    deleted = await prune(db, POLICY)
    doomed = {(t, j) for (t, j, _, _), gone in JOBS if gone}
    kept = {(t, j) for (t, j, _, _), gone in JOBS if not gone}
    assert deleted["jobs"] + deleted["canary jobs"] == len(doomed)
    assert deleted["canary jobs"] == 2
    assert await keys(db, "jobs") == kept
    # A job's attempts and events go with it, and no other tenant's job of the same id.
    assert await keys(db, "job_attempts") == kept
    assert await keys(db, "job_events") == kept
    # Deliveries: the deleted job's went with it, one ended 40 days ago went by age; a pending
    # one and a recent one stay.
    assert await keys(db, "webhook_deliveries") == {("acme", "old-running"), ("bravo", "two-days")}
    assert deleted["webhook deliveries"] == 1
    assert [r["event_id"] for r in await db.fetch("SELECT event_id FROM rejected_events")] == [
        "r-new"
    ]
    # Dead letters: only one re-submitted long enough ago; one never retried stays.
    seqs = await db.fetch("SELECT stream_seq FROM dead_letters ORDER BY 1")
    assert [r["stream_seq"] for r in seqs] == [2, 3]

    # Workflows: only the old ended one, and its step with it.
    assert deleted["workflows"] == 1
    left = await db.fetch("SELECT workflow_id FROM workflow_steps ORDER BY 1")
    assert [r["workflow_id"] for r in left] == ["wf-running", "wf-young"]

    # A second run finds nothing more.
    assert set((await prune(db, POLICY)).values()) == {0}


async def test_pruning_never_takes_a_job_that_became_unfinished(db: asyncpg.Pool) -> None:
    """A dead letter's retry turns an old failed job back into `submitted` (clearing
    finished_at): from then on retention leaves it alone."""
    await seed(db)
    await db.execute(
        "UPDATE jobs SET state = 'submitted', state_rank = 0, finished_at = NULL"
        " WHERE tenant = 'acme' AND job_id = 'old-failed'"
    )
    await prune(db, POLICY)
    assert (
        await count(db, "SELECT count(*) FROM jobs WHERE tenant = 'acme' AND job_id = 'old-failed'")
        == 1
    )


async def test_pruning_waits_out_a_postgres_outage(
    db: asyncpg.Pool,
    pg_server: PostgresServer | ExternalPostgres,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert isinstance(pg_server, PostgresServer), "this test restarts the embedded Postgres"
    await seed(db)
    stop = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="flotilla.retention")
    await pg_server.stop()
    task: asyncio.Task[None] | None = None
    try:
        task = asyncio.create_task(run_pruner(db, POLICY, 0.2, stop))

        async def failed_once() -> bool:
            assert not task.done(), "the pruner ended during the outage"
            return any("pruning failed" in r.getMessage() for r in caplog.records)

        await wait_until(failed_once, "a failed pruning run")
    finally:
        await pg_server.start()
    try:
        kept = {(t, j) for (t, j, _, _), gone in JOBS if not gone}

        async def pruned() -> bool:
            # The whole run, not its first step: canaries go first, the other jobs after.
            assert not task.done(), "the pruner ended"
            with contextlib.suppress(asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                return await keys(db, "jobs") == kept
            return False

        await wait_until(pruned, "pruning once Postgres is back")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith("flotilla")]
    assert tracebacks == []
