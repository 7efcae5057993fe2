"""The estimator maths behind deadlines: learning, run and finish estimates, lateness, and the
admission verdict."""

from __future__ import annotations

import pytest

from control.api.deadline import judge, past_deadline, stamp
from control.cli.jobflags import deadline_value
from control.errors import BadInput
from control.runtimes import (
    ALPHA,
    Learned,
    OpenDeadline,
    RunEstimate,
    RuntimeKey,
    Sample,
    finish_at,
    height_bucket,
    lateness,
    learn,
    media_seconds,
    run_estimate,
    runtime_key,
    sample_of,
)
from schemas.jobs import JobSpec, Requirements
from schemas.operations import Package, Probe, Rung, Transcode
from schemas.results import JobResult

KEY = RuntimeKey("transcode", "h264", 1080, "cpu")


def transcode(**op: object) -> JobSpec:
    return JobSpec(job_id="j", input="file:///in.mp4", output="file:///out.mp4",
                   operation=Transcode(**op))  # type: ignore[arg-type]  # fmt: skip


def test_height_buckets_round_up() -> None:
    assert [height_bucket(h) for h in (None, 0, 360, 480, 481, 1080, 1081, 2160, 9000)] == [
        0, 0, 480, 480, 720, 1080, 1440, 2160, 4320,
    ]  # fmt: skip


def test_keys_follow_what_drives_the_cost() -> None:
    assert runtime_key(transcode(codec="hevc", height=700)) == RuntimeKey(
        "transcode", "hevc", 720, "cpu"
    )
    assert runtime_key(transcode()) == RuntimeKey("transcode", "h264", 0, "cpu")
    ladder = [Rung(height=720, bitrate_kbps=2800), Rung(height=1080, bitrate_kbps=5000,
                                                         codec="hevc")]  # fmt: skip
    pkg = JobSpec(job_id="p", input="file:///in.mp4", output="file:///out/",
                  operation=Package(ladder=ladder),
                  requirements=Requirements(pool="big"))  # fmt: skip
    assert runtime_key(pkg) == RuntimeKey("package", "hevc", 1080, "big")
    probe = JobSpec(job_id="q", input="file:///in.mp4", operation=Probe())
    assert runtime_key(probe) == RuntimeKey("probe", "", 0, "cpu")


def test_means_are_plain_averages_then_exponential() -> None:
    first = learn(Learned(), [Sample(10.0, 40.0), Sample(20.0, 40.0), Sample(30.0, None)])
    assert first.runs == 3 and first.wall_s == pytest.approx(20.0)
    assert first.rtf_runs == 2 and first.rtf == pytest.approx(3.0)  # (4 + 2) / 2
    # Past 1 / ALPHA runs a new one moves the mean by ALPHA of the difference.
    settled = learn(Learned(), [Sample(100.0)] * int(1 / ALPHA))
    assert settled.wall_s == pytest.approx(100.0)
    moved = learn(settled, [Sample(200.0)])
    assert moved.wall_s == pytest.approx(100.0 + ALPHA * 100.0) and moved.runs == 11


def test_samples_from_results() -> None:
    assert sample_of(JobResult(wall_seconds=12.0, media_seconds=60.0)) == Sample(12.0, 60.0)
    # No wall time in the result: the recorded run time; nothing at all: nothing to learn.
    assert sample_of(JobResult(), 8.0) == Sample(8.0, None)
    assert sample_of(JobResult(), None) is None
    assert sample_of(JobResult(wall_seconds=3.0, media_seconds=0.0)) == Sample(3.0, None)


def test_media_seconds_from_trim_and_hint() -> None:
    assert media_seconds(transcode(), None) is None
    assert media_seconds(transcode(), 600.0) == 600.0
    assert media_seconds(transcode(duration_seconds=30.0), None) == 30.0
    assert media_seconds(transcode(duration_seconds=30.0), 20.0) == 20.0  # input shorter
    assert media_seconds(transcode(start_seconds=100.0), 600.0) == 500.0
    assert media_seconds(transcode(start_seconds=700.0), 600.0) == 0.0


def test_run_estimate_prefers_the_realtime_factor() -> None:
    known = Learned(runs=5, wall_s=90.0, rtf_runs=4, rtf=2.0)
    assert run_estimate(known, 600.0) == RunEstimate(300.0, 4, "realtime factor")
    assert run_estimate(known, None) == RunEstimate(90.0, 5, "wall time")
    assert run_estimate(Learned(runs=2, wall_s=50.0), 600.0) == RunEstimate(50.0, 2, "wall time")
    assert run_estimate(None, 600.0) is None
    assert run_estimate(Learned(), None) is None


def test_finish_counts_the_queue_over_the_slots() -> None:
    assert finish_at(1000.0, 60.0, ahead=0, slots=4) == 1060.0
    assert finish_at(1000.0, 60.0, ahead=8, slots=4) == 1000.0 + 120.0 + 60.0
    assert finish_at(1000.0, 60.0, ahead=2, slots=0) == 1000.0 + 120.0 + 60.0  # no live slot


def test_verdicts() -> None:
    now = 1_800_000_000.0
    run = RunEstimate(600.0, 7, "wall time")
    ok = judge(now + 3600, now, run, KEY, ahead=2, slots=2)
    assert ok.infeasible is None and ok.finish == now + 1200 and ok.runs == 7 and ok.run_s == 600
    assert "estimate from 7 runs of transcode h264 <=1080p on cpu" in ok.note
    late = judge(now + 900, now, run, KEY, ahead=2, slots=2)
    assert late.infeasible == (
        f"deadline {stamp(now + 900)} cannot be met: the job could finish about "
        f"{stamp(now + 1200)} ({late.note})"
    )
    blind = judge(now + 10, now, None, KEY, ahead=50, slots=1)
    assert blind.finish is None and blind.infeasible is None and blind.note.startswith("no est")
    assert past_deadline(now, now) is not None and past_deadline(now + 1, now) is None


def test_lateness() -> None:
    now = 10_000.0
    waiting = OpenDeadline("t/j", deadline=now + 100, state="queued", estimated_run_s=150.0)
    assert lateness(waiting, now) == pytest.approx(50.0)
    assert lateness(OpenDeadline("t/j", now + 100, "queued", None, 50.0), now) is None
    # A running job counts from its start; past its estimate it finishes no earlier than now.
    running = OpenDeadline("t/j", now + 100, "running", started_at=now - 100, estimated_run_s=150)
    assert lateness(running, now) is None
    overdue = OpenDeadline("t/j", now + 100, "running", started_at=now - 500, estimated_run_s=150)
    assert lateness(overdue, now) is None
    assert lateness(OpenDeadline("t/j", now + 100, "submitted"), now) is None
    assert lateness(OpenDeadline("t/j", now - 30, "submitted"), now) == pytest.approx(30.0)


def test_cli_deadline_values() -> None:
    assert deadline_value("2h", now=0.0) == "1970-01-01T02:00:00Z"
    assert deadline_value("2026-12-03T18:00:00") == "2026-12-03T18:00:00Z"
    assert deadline_value("2026-12-03T19:00:00+01:00") == "2026-12-03T18:00:00Z"
    with pytest.raises(BadInput, match=r"a time like .* or a duration like 2h"):
        deadline_value("tomorrow")
