"""Deadlines on real Postgres and NATS: run times learned from folded `completed` events (once
per job), submit-time admission under both policies, and the leader's at-risk check with an
injected clock."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from control.alerts.rules import AlertEngine, Snapshot
from control.alerts.snapshot import with_deadlines
from control.api.service import ApiService, ApiSettings
from control.cli.jobflags import submit_argv
from control.cli.main import build_parser
from control.config import AlertThresholds
from control.db.store import Incoming, store_batch
from control.errors import CliError
from control.ingest import Ingestor
from control.metrics import Metrics
from control.nodes import NodeTracker
from control.runtimes import RuntimeKey
from control.service import ControlPlane
from control.topology import ingest_consumer_config
from schemas.alerts import Alert
from schemas.api import SubmitRequest
from schemas.codec import encode
from schemas.events import Completed, Event, kind_of
from schemas.jobs import JobSpec
from schemas.operations import Transcode
from schemas.results import JobResult
from schemas.subjects import Subjects
from tests.support.api import call, code, job
from tests.support.controlplane import control_config
from tests.support.ingest import (
    SETTINGS,
    accepted,
    eid,
    publish,
    running,
    setup,
    started,
    wait_until,
)
from tests.support.noderecords import node_record, put_node, tracking

#: The group of `tests.support.api.job`: an h264 transcode at source size on cpu.
KEY = RuntimeKey("transcode", "h264", 0, "cpu")


@pytest_asyncio.fixture
async def fleet(nc: NATS, prefix: str) -> AsyncIterator[NodeTracker]:
    js, subjects = await setup(nc, prefix)
    async with tracking(js, subjects) as tracker:
        await put_node(js, subjects, node_record("n1"), seen_by=tracker)
        yield tracker


@pytest_asyncio.fixture
async def api(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> AsyncIterator[ApiService]:
    svc = ApiService(nc, Subjects(prefix), ApiSettings(pools=["cpu"]), fleet, db)
    await svc.start()
    try:
        yield svc
    finally:
        await svc.stop()


def spec(job_id: str, height: int | None = None) -> JobSpec:
    op = Transcode(codec="h264", height=height)
    return JobSpec(job_id=job_id, tenant="acme", input="file:///in.mp4",
                   output="file:///out.mp4", operation=op)  # fmt: skip


def done(job_id: str, wall: float, media: float | None, ts: float) -> Completed:
    result = JobResult(wall_seconds=wall, media_seconds=media)
    return Completed(event_id=eid(), job_id=job_id, tenant="acme", node_id="n1", attempt=1,
                     ts=ts, result=result)  # fmt: skip


def run(job_id: str, wall: float, media: float | None, height: int | None = None) -> list[Event]:
    t0 = time.time()
    return [
        accepted(job_id, ts=t0, spec=spec(job_id, height)),
        started(job_id, ts=t0 + 0.1),
        done(job_id, wall, media, t0 + 0.2),
    ]


async def fold(db: asyncpg.Pool, events: Sequence[Event]) -> None:
    """Fold events as ingest does (one batch, one transaction)."""
    items = [Incoming(e, encode(e).decode(), None, f"x.events.{e.node_id}.{kind_of(e)}")
             for e in events]  # fmt: skip
    async with db.acquire() as conn, conn.transaction():
        await store_batch(conn, items)


async def learned(db: asyncpg.Pool, key: RuntimeKey) -> dict[str, Any] | None:
    row = await db.fetchrow(
        "SELECT runs, wall_s, rtf_runs, rtf FROM runtime_estimates"
        " WHERE operation = $1 AND codec = $2 AND height = $3 AND pool = $4",
        key.operation, key.codec, key.height, key.pool,
    )  # fmt: skip
    return None if row is None else dict(row)


async def drained(js: JetStreamContext, subjects: Subjects, durable: str) -> bool:
    info = await js.consumer_info(subjects.events_stream, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def test_estimates_are_learned_once_per_completed_job(
    nc: NATS, prefix: str, db: asyncpg.Pool
) -> None:
    js, subjects = await setup(nc, prefix)
    first = run("a", wall=10.0, media=40.0, height=700)
    second = run("b", wall=20.0, media=40.0, height=720)
    events = [*first, *second, *run("c", wall=5.0, media=None)]
    # The same `completed` once more under another message id (a redelivery the stream does not
    # deduplicate), and a second `completed` of job a with its own event id, arriving later but
    # stamped earlier: it wins the fold and changes the completed row, yet counts nothing.
    echo = msgspec.structs.replace(first[-1], event_id=eid(), ts=first[-1].ts - 0.05)
    await publish(js, subjects, events)
    await js.publish(subjects.events("n1", "completed"), encode(first[-1]),
                     headers={"Nats-Msg-Id": "again"})  # fmt: skip
    await publish(js, subjects, [echo])
    ingestor = Ingestor(js, db, subjects, batch=3, fetch_timeout=0.2)
    async with running(ingestor):
        await wait_until(lambda: drained(js, subjects, subjects.ingest_consumer), "ingest")
    at_720 = RuntimeKey("transcode", "h264", 720, "cpu")
    # Two runs of the 720 group: mean wall 15 s, mean realtime factor (4 + 2) / 2.
    assert await learned(db, at_720) == {"runs": 2, "wall_s": 15.0, "rtf_runs": 2, "rtf": 3.0}
    # Job c gave no media duration: a wall time, no realtime factor.
    assert await learned(db, KEY) == {"runs": 1, "wall_s": 5.0, "rtf_runs": 0, "rtf": 0.0}

    # The whole stream folded again by a second consumer: nothing counts twice.
    replay = dataclasses.replace(ingest_consumer_config(subjects, SETTINGS), durable_name="replay")
    await js.add_consumer(subjects.events_stream, replay)
    again = Ingestor(js, db, subjects, batch=500, fetch_timeout=0.2, durable="replay")
    async with running(again):
        await wait_until(lambda: drained(js, subjects, "replay"), "replay")
    assert again.stats.events_ingested == 0
    assert (await learned(db, at_720) or {})["runs"] == 2
    assert (await learned(db, KEY) or {})["runs"] == 1


async def submit(
    nc: NATS, prefix: str, job_id: str, deadline_in: float, **extra: Any
) -> tuple[dict[str, Any], str]:
    deadline = datetime.fromtimestamp(time.time() + deadline_in, UTC).isoformat()
    body = {"v": 1, "job": job(job_id, deadline=deadline), **extra}
    reply, headers = await call(nc, prefix, "job.submit", body)
    return reply, code(headers)


async def test_infeasible_deadline_is_refused_with_the_estimate(
    nc: NATS, prefix: str, db: asyncpg.Pool, api: ApiService
) -> None:
    await fold(db, [e for i in range(3) for e in run(f"past{i}", wall=600.0, media=None)])
    reply, status = await submit(nc, prefix, "late", deadline_in=60)
    assert status == "409", reply
    message = reply["message"]
    assert "cannot be met: the job could finish about" in message
    assert "estimate from 3 runs of transcode h264 source size on cpu" in message
    assert "600 s to run (by wall time)" in message
    # Refused means not queued, not recorded.
    _, got = await call(nc, prefix, "job.get", {"v": 1, "job_id": "late", "tenant": "default"})
    assert code(got) == "404"


async def test_feasible_deadline_is_admitted_with_its_estimate(
    nc: NATS, prefix: str, db: asyncpg.Pool, api: ApiService
) -> None:
    await fold(db, [e for i in range(3) for e in run(f"past{i}", wall=600.0, media=None)])
    before = time.time()
    reply, status = await submit(nc, prefix, "ok", deadline_in=86400)
    assert status == "ok", reply
    assert reply["estimate_runs"] == 3 and "deadline_warning" not in reply
    assert before + 600 <= reply["estimated_finish"] <= time.time() + 600
    row = await db.fetchrow("SELECT deadline, estimated_run_s FROM jobs WHERE job_id = 'ok'")
    assert row is not None and row["estimated_run_s"] == 600.0
    assert abs(row["deadline"].timestamp() - (before + 86400)) < 60

    # The next one waits behind it: 1 job ahead over the node's one slot.
    reply, status = await submit(nc, prefix, "next", deadline_in=86400)
    assert status == "ok" and "1 job ahead over 1 slot" in reply["estimate_note"]
    assert reply["estimated_finish"] >= before + 1200


async def test_a_duration_hint_uses_the_realtime_factor(
    nc: NATS, prefix: str, db: asyncpg.Pool, api: ApiService
) -> None:
    await fold(db, run("past", wall=50.0, media=100.0))  # twice realtime
    reply, status = await submit(nc, prefix, "long", 400, duration_hint_s=1000.0)
    assert status == "409" and "500 s to run (by realtime factor)" in reply["message"], reply
    reply, status = await submit(nc, prefix, "short", 400, duration_hint_s=100.0)
    assert status == "ok" and "50 s to run (by realtime factor)" in reply["estimate_note"]


async def test_warn_policy_admits_with_a_warning(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> None:
    await fold(db, run("past", wall=600.0, media=None))
    settings = ApiSettings(pools=["cpu"], deadline_policy="warn")
    svc = ApiService(nc, Subjects(prefix), settings, fleet, db)
    await svc.start()
    try:
        reply, status = await submit(nc, prefix, "late", deadline_in=60)
        assert status == "ok", reply
        assert "could finish about" in reply["deadline_warning"]
        assert reply["estimate_runs"] == 1 and reply["estimated_finish"] is not None
        _, got = await call(nc, prefix, "job.get", {"v": 1, "job_id": "late"})
        assert code(got) == "ok"
        # A deadline already past is refused under `warn` too.
        reply, status = await submit(nc, prefix, "gone", deadline_in=-5)
        assert status == "400" and "is already past" in reply["message"]
    finally:
        await svc.stop()


async def test_past_deadline_is_refused(nc: NATS, prefix: str, api: ApiService) -> None:
    reply, status = await submit(nc, prefix, "gone", deadline_in=-60)
    assert status == "400" and "is already past (now " in reply["message"], reply
    # Without a deadline the reply is as a CLI of the release before reads it: no new fields.
    plain, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": job("plain")})
    assert code(headers) == "ok" and set(plain) == {"v", "job_id", "subject", "stream", "seq",
                                                    "duplicate"}  # fmt: skip
    assert b"duration_hint_s" not in encode(SubmitRequest(job=spec("x")))


async def test_a_retried_submit_is_a_duplicate_even_past_its_deadline(
    nc: NATS, prefix: str, db: asyncpg.Pool, fleet: NodeTracker
) -> None:
    offset = 0.0
    settings = ApiSettings(pools=["cpu"])
    svc = ApiService(nc, Subjects(prefix), settings, fleet, db, clock=lambda: time.time() + offset)
    await svc.start()
    try:
        body = {"v": 1, "job": job("again", deadline=datetime.fromtimestamp(
            time.time() + 600, UTC).isoformat())}  # fmt: skip
        _, headers = await call(nc, prefix, "job.submit", body)
        assert code(headers) == "ok"
        offset = 3600.0  # the client retries an hour later (its first reply was lost)
        reply, headers = await call(nc, prefix, "job.submit", body)
        assert code(headers) == "ok" and reply["duplicate"] is True, reply
        assert "is already past" in reply["deadline_warning"]
        # Another job with that deadline is refused.
        other = {"v": 1, "job": {**body["job"], "job_id": "other"}}
        reply, headers = await call(nc, prefix, "job.submit", other)
        assert code(headers) == "400" and "is already past" in reply["message"]
    finally:
        await svc.stop()


async def test_unknown_estimate_admits_and_says_so(
    nc: NATS, prefix: str, db: asyncpg.Pool, api: ApiService
) -> None:
    # Runs of another group (720p) say nothing about this one (source size).
    await fold(db, run("past", wall=600.0, media=None, height=720))
    reply, status = await submit(nc, prefix, "new", deadline_in=30)
    assert status == "ok", reply
    assert "estimated_finish" not in reply and "estimate_runs" not in reply
    assert reply["estimate_note"].startswith("no estimate: no completed run of transcode h264")


async def test_at_risk_alert_fires_for_a_waiting_job_whose_deadline_passes(
    nc: NATS, prefix: str, db: asyncpg.Pool, api: ApiService
) -> None:
    await fold(db, run("past", wall=600.0, media=None))
    t0 = time.time()
    _, status = await submit(nc, prefix, "estimated", deadline_in=3600)  # 600 s estimate
    assert status == "ok"
    # No completed run of 720p: no estimate, admitted, watched for the deadline alone.
    body = {
        "v": 1,
        "job": job(
            "blind",
            deadline=datetime.fromtimestamp(t0 + 3600, UTC).isoformat(),
            operation={"op": "transcode", "height": 720},
        ),
    }
    _, headers = await call(nc, prefix, "job.submit", body)
    assert code(headers) == "ok"

    fired: list[Alert] = []

    async def sink(alert: Alert) -> None:
        fired.append(alert)

    engine = AlertEngine(AlertThresholds(hysteresis=2), sink)
    metrics = Metrics()

    async def tick(now: float) -> Snapshot:
        snap = await with_deadlines(Snapshot(), db, now=now)
        await engine.evaluate(snap, now)
        metrics.update(snap, engine.firing())
        return snap

    def counted(reason: str) -> float:
        return (
            metrics.registry.get_sample_value(
                "flotilla_deadline_at_risk_jobs_total", {"reason": reason}
            )
            or 0.0
        )

    # Now: both have time left.
    assert (await tick(time.time())).deadlines_at_risk == {}
    # 3100 s on: the estimated job would finish at 3700 s, past its deadline; the other is fine.
    snap = await tick(t0 + 3100)
    assert set(snap.deadlines_at_risk) == {"default/estimated"}
    assert 0 < snap.deadlines_at_risk["default/estimated"] <= 700
    # Two hours on, still waiting: both deadlines passed.
    for _ in range(2):
        snap = await tick(t0 + 7200)
    assert set(snap.deadlines_missed) == {"default/estimated", "default/blind"}
    firing = {(a.rule, a.subject) for a in fired if a.state == "firing"}
    assert firing == {("deadline_at_risk", "default/estimated"),
                      ("deadline_at_risk", "default/blind")}  # fmt: skip
    assert counted("late_estimate") == 1 and counted("missed") == 2  # once per job and reason

    # The jobs finish: the alerts resolve.
    await db.execute("UPDATE jobs SET state = 'completed' WHERE job_id IN ('estimated', 'blind')")
    for _ in range(2):
        await tick(t0 + 7300)
    assert engine.firing() == [] and counted("missed") == 2


async def test_cli_submit_shows_the_estimate(
    nc: NATS, nats_url: str, prefix: str, db: asyncpg.Pool, api: ApiService,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    await fold(db, [e for i in range(2) for e in run(f"past{i}", wall=90.0, media=None)])

    async def flotilla(*argv: str) -> int:
        flags = ["--nats-url", nats_url, "--prefix", prefix]
        args = build_parser().parse_args(submit_argv(["submit", *argv, *flags]))
        return int(await args.handler(args))

    assert await flotilla("transcode", "in.mp4", "out.mp4", "--deadline", "1d") == 0
    out = capsys.readouterr().out
    assert re.search(r"estimated finish \S+ \S+Z \(estimate from 2 runs of transcode h264", out)
    assert await flotilla("transcode", "in.mp4", "out.mp4", "--deadline", "1d", "--json") == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["estimate_runs"] == 2 and reply["estimated_finish"] > time.time()
    # Refused: the one-line error names the estimate.
    with pytest.raises(CliError, match=r"could finish about \S+ \(estimate from 2 runs"):
        await flotilla("transcode", "in.mp4", "out.mp4", "--deadline", "30s")


async def test_ingest_keeps_the_deadline_of_a_job_published_straight_to_the_stream(
    db: asyncpg.Pool,
) -> None:
    # No API on the way: the node's `accepted` carries the spec; a time without an offset is UTC.
    naive = msgspec.structs.replace(spec("direct"), deadline=datetime(2030, 1, 2, 3, 4, 5))
    await fold(db, [accepted("direct", spec=naive)])
    due = await db.fetchval("SELECT deadline FROM jobs WHERE job_id = 'direct'")
    assert due == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    snap = await with_deadlines(Snapshot(), db, now=datetime(2030, 1, 3, tzinfo=UTC).timestamp())
    assert set(snap.deadlines_missed) == {"acme/direct"}


async def test_the_leader_alerts_when_a_waiting_job_misses_its_deadline(
    nc: NATS, nats_url: str, prefix: str, database_url: str
) -> None:
    """The whole control plane in-process, its clock moved past the deadline instead of
    waited for: the leader fires `deadline_at_risk` for the job and counts it."""
    offset = 0.0
    cfg = control_config(nats_url, prefix, database_url, alert_interval=0.2,
                         alerts=AlertThresholds(hysteresis=1))  # fmt: skip
    plane = ControlPlane(cfg, clock=lambda: time.time() + offset)
    await plane.start()
    try:
        js = nc.jetstream()
        await put_node(js, Subjects(prefix), node_record("n1"), seen_by=plane.nodes)
        reply, status = await submit(nc, prefix, "waits", deadline_in=3600)
        assert status == "ok", reply
        db = plane.db
        assert db is not None

        async def firing() -> set[str]:
            rows = await db.fetch(
                "SELECT subject FROM alerts WHERE rule = 'deadline_at_risk' AND state = 'firing'"
            )
            return {r["subject"] for r in rows}

        await wait_until(lambda: leading(plane), "the plane leads")
        assert await firing() == set()
        offset = 7200.0  # two hours on, the job still waiting
        await wait_until(lambda: has(firing, "default/waits"), "deadline_at_risk fires")
        missed = plane.metrics.registry.get_sample_value(
            "flotilla_deadline_at_risk_jobs_total", {"reason": "missed"}
        )
        assert missed == 1.0
    finally:
        await plane.stop()


async def leading(plane: ControlPlane) -> bool:
    """It holds the lease and has exported a snapshot since."""
    led = plane.metrics.registry.get_sample_value("flotilla_control_leader")
    return led == 1.0 and plane.metrics.updated_at is not None


async def has(source: Callable[[], Awaitable[set[str]]], subject: str) -> bool:
    return subject in await source()
