"""The snapshot's job counts on real Postgres: every unfinished job, finished ones in the window."""

from __future__ import annotations

import asyncpg

from control.alerts.rules import Snapshot
from control.alerts.snapshot import with_db
from control.metrics import Metrics

#: (job id, pool, state, seconds since it finished or None)
JOBS = [
    ("q1", "cpu", "queued", None),
    ("q2", "cpu", "queued", None),
    ("r1", "nvenc", "running", None),
    ("s1", "cpu", "submitted", None),
    ("done-now", "cpu", "completed", 10.0),
    ("failed-now", "cpu", "failed", 20.0),
    ("failed-now-2", "nvenc", "failed", 30.0),
    ("cancelled-now", "cpu", "cancelled", 40.0),
    # Outside the window: history, not counted.
    ("done-old", "cpu", "completed", 7200.0),
    ("failed-old", "cpu", "failed", 86400.0 * 30),
]


async def test_counts_read_the_backlog_and_the_window(db: asyncpg.Pool) -> None:
    for job_id, pool, state, ago in JOBS:
        # Unfinished jobs submitted long ago still count: the backlog is counted whole.
        await db.execute(
            "INSERT INTO jobs (tenant, job_id, pool, state, submitted_at, finished_at)"
            " VALUES ('acme', $1, $2, $3, now() - interval '40 days',"
            " now() - make_interval(secs => $4::float8))",
            job_id, pool, state, ago,
        )  # fmt: skip
    snap = await with_db(Snapshot(), db, failure_window=900.0)
    assert snap.jobs == {
        ("queued", "cpu"): 2,
        ("running", "nvenc"): 1,
        ("submitted", "cpu"): 1,
        ("completed", "cpu"): 1,
        ("failed", "cpu"): 1,
        ("failed", "nvenc"): 1,
        ("cancelled", "cpu"): 1,
    }
    assert (snap.finished_in_window, snap.failed_in_window) == (4, 2)
    assert list(snap.running_idle_s) == ["r1"]

    metrics = Metrics()
    metrics.update(snap, [])
    sample = metrics.registry.get_sample_value
    assert sample("flotilla_fleet_jobs", {"state": "queued", "pool": "cpu"}) == 2.0
    assert sample("flotilla_fleet_jobs", {"state": "completed", "pool": "cpu"}) == 1.0
