"""`flotilla sim` keeps to the truth: its nodes are the daemon's own code, and what it reports of
a small run is what the node journals and Postgres hold.

One small scenario against the real stack (nats-server, PostgreSQL, the control plane): ten nodes
in simulator processes, jobs through the submit API, one node SIGKILLed mid-run. Asserted:
- every node runs `daemon.app.Daemon` with the real `Journal`, only the operation is the stand-in;
- every submitted job has exactly one row in Postgres, terminal, none lost or run twice;
- the jobs each node's journal holds are the jobs Postgres says started on that node (the killed
  node's journal may hold more: what it journaled and died before publishing), and the
  events Postgres holds for the run are the events the journals' outboxes hold (a killed node's
  unsent rows aside);
- the killed node is reported offline by the API, and the report's counts are Postgres's.
No timing is asserted: latencies are printed only.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

import asyncpg
import msgspec
import pytest

from control.sim.niceness import AUTOGROUP
from control.sim.report import render
from control.sim.runner import Run, run
from control.sim.scenario import ApiTraffic, Death, JobKind, Scenario
from control.sim.workload import TENANT
from tests.support.devfleet import open_dir

SCENARIO = Scenario(
    name="test",
    nodes=10,
    slots={"cpu": 2},
    jobs=[JobKind(seconds_min=0.2, seconds_max=2.0)],
    rate=3.0,
    duration_s=15.0,
    deaths=[Death(at_s=4.0, nodes=1)],
    api=ApiTraffic(get_per_s=1.0, list_per_s=0.5, nodes_per_s=0.5),
    seed_jobs=500,
    processes=1,
    nodes_nice=1,  # applied (asserted below), too small to slow the nodes
    ack_wait=8.0,
    node_offline_after=6.0,
    alert_interval=2.0,
    settle_s=120.0,
)


def _journal(path: str, run_id: str) -> tuple[set[str], dict[str, bool]]:
    """The run's job ids in a journal, and its outbox's run events: event id -> sent."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        jobs = {r[0] for r in db.execute("SELECT job_id FROM jobs") if r[0].startswith(run_id)}
        events = {}
        for event_id, payload, sent_at in db.execute(
            "SELECT event_id, payload, sent_at FROM outbox"
        ):
            body = msgspec.json.decode(payload)
            if str(body.get("job_id", "")).startswith(run_id):
                events[event_id] = sent_at is not None
        return jobs, events
    finally:
        db.close()


@pytest.mark.timeout(400)
async def test_small_scenario_matches_journals_and_postgres(tmp_path: Path) -> None:
    seen: dict[str, object] = {}

    async def inspect(r: Run) -> None:
        conn = await asyncpg.connect(r.fleet.database_url, timeout=30)
        try:
            seen["rows"] = await conn.fetch(
                "SELECT job_id, state FROM jobs WHERE tenant = $1 AND job_id LIKE $2",
                TENANT, r.run_id + "%",
            )  # fmt: skip
            seen["started"] = await conn.fetch(
                "SELECT DISTINCT node_id, job_id FROM job_events "
                "WHERE tenant = $1 AND job_id LIKE $2 AND kind = 'started'",
                TENANT, r.run_id + "%",
            )  # fmt: skip
            seen["events"] = {
                row["event_id"]
                for row in await conn.fetch(
                    "SELECT event_id FROM job_events WHERE tenant = $1 AND job_id LIKE $2",
                    TENANT,
                    r.run_id + "%",
                )
            }
            seen["seeded"] = await conn.fetchval("SELECT count(*) FROM jobs WHERE tenant = 'seed'")
        finally:
            await conn.close()
        seen["manifests"] = r.manifests
        seen["run_id"] = r.run_id
        seen["journals"] = {
            node: await asyncio.to_thread(_journal, m["journal_path"], r.run_id)
            for node, m in r.manifests.items()
        }

    lines: list[str] = []
    async with open_dir("sim-test-") as work:
        report = await run(SCENARIO, work, lines.append, state_root=tmp_path / "nodes",
                           inspect=inspect)  # fmt: skip
    print("\n".join(lines))
    print(render(report))

    manifests = seen["manifests"]
    assert isinstance(manifests, dict) and len(manifests) == SCENARIO.nodes
    for node, m in manifests.items():
        assert m["daemon"] == "daemon.app.Daemon", (node, m)
        assert m["journal"] == "daemon.journal.store.Journal", (node, m)
        assert m["operation"] == "control.sim.standin.run_standin", (node, m)
        assert m["nice"] == min(19, os.nice(0) + SCENARIO.nodes_nice), (node, m)
        # Each simulator process leads its session: under autogroup its session yields too
        # (a kernel without autogroup reports none). This test's own process may sit in the boot
        # session's group, which reads as none, so the file's presence is what tells.
        expected = m["nice"] if AUTOGROUP.exists() else None
        assert m["autogroup_nice"] == expected, (node, m)

    # Every job the driver sent: confirmed, one row, completed; the report says the same.
    rows = seen["rows"]
    assert isinstance(rows, list)
    total = int(SCENARIO.rate * SCENARIO.duration_s)
    assert report.jobs.submitted == report.jobs.confirmed == total
    assert len(rows) == len({r["job_id"] for r in rows}) == total
    assert all(r["state"] == "completed" for r in rows), [
        r for r in rows if r["state"] != "completed"
    ]
    assert report.jobs.rows == total and report.jobs.completed == total
    assert report.jobs.lost == 0 and report.jobs.duplicated == 0 and report.jobs.stuck == 0
    assert seen["seeded"] == SCENARIO.seed_jobs

    # Each node's journal holds the jobs Postgres says it started, and no other.
    journals = seen["journals"]
    assert isinstance(journals, dict)
    started: dict[str, set[str]] = {}
    for r in seen["started"]:  # type: ignore[attr-defined]
        started.setdefault(r["node_id"], set()).add(r["job_id"])
    killed = set(report.killed)
    for node, (jobs, _) in journals.items():
        if node in killed:  # it may have journaled a job it died before telling anyone of
            assert started.get(node, set()) <= jobs, node
        else:
            assert jobs == started.get(node, set()), node
    assert sum(len(j) for j, _ in journals.values()) >= total
    assert len(started) > 1  # the work was spread over the fleet

    # Postgres's events of the run are the journals' outbox rows; only the killed node may
    # hold rows it never sent.
    pg_events = seen["events"]
    assert isinstance(pg_events, set)
    in_journals = {e: sent for _, ev in journals.values() for e, sent in ev.items()}
    assert pg_events <= set(in_journals)
    assert {e for e, sent in in_journals.items() if sent} <= pg_events
    unsent = {node for node, (_, ev) in journals.items() for e in ev if e not in pg_events}
    assert unsent <= killed, unsent
    assert report.jobs.events == len(pg_events)

    # The death: reported offline by the API (not merely gone from the list).
    assert len(killed) == 1
    node = next(iter(killed))
    assert node in report.offline_detect, report.offline_seen_as
    assert report.offline_seen_as[node] == "offline"
    json.dumps(report.jobs.states)
