"""A job's soft and hard timeouts and the pause limit, through a real daemon, NATS and ffmpeg.

The soft timeout only reports (a `progress` event with `slow: true`, a metric) and the job
finishes; the hard timeout stops ffmpeg and fails the attempt (retried, then final); a pause held
past `pause_limit` is resumed by the daemon, so the encode finishes on the same node, once.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import generate_latest

from daemon.job.handle import JobHandle
from daemon.job.running import RunningJobs
from daemon.job.watch import WatchHooks, watch_job
from tests.support.daemons import events, has, job, kinds, submit, until


async def test_soft_timeout_reports_slow_and_the_job_goes_on(
    js: JetStreamContext, prefix: str, start_daemon: Any, long_clip: Path, tmp_path: Path
) -> None:
    d = await start_daemon()
    out = tmp_path / "soft.mp4"
    spec = job("soft", long_clip, out, preset="veryslow", width=640, height=480)
    spec["timeouts"] = {"soft_seconds": 0.5, "hard_seconds": 600}
    await submit(js, prefix, spec)

    async def slow_reported() -> bool:
        evts = await events(js, prefix, "soft")
        return any(e["kind"] == "progress" and e.get("slow") for e in evts)

    await until(slow_reported)
    metrics = generate_latest(d.metrics.registry).decode()
    assert 'flotilla_job_soft_timeouts_total{pool="cpu"} 1.0' in metrics
    # Past the soft timeout the encode goes on; cut it short here (a veryslow encode is long).
    d.running.cancel("soft", "test done")
    await until(has(js, prefix, "soft", "cancelled"))
    evts = await events(js, prefix, "soft")
    assert "failed" not in kinds(evts)
    slow = [e for e in evts if e["kind"] == "progress" and e.get("slow")]
    assert len(slow) >= 1 and kinds(evts)[:2] == ["accepted", "started"]


async def test_soft_timeout_then_completed(
    js: JetStreamContext, prefix: str, start_daemon: Any, long_clip: Path, tmp_path: Path
) -> None:
    await start_daemon()
    spec = job("soft2", long_clip, tmp_path / "soft2.mp4")
    spec["timeouts"] = {"soft_seconds": 0.001}  # passes before ffmpeg starts: reported after
    await submit(js, prefix, spec)
    await until(has(js, prefix, "soft2", "completed"))
    evts = await events(js, prefix, "soft2")
    seq = kinds(evts)
    assert seq[:3] == ["accepted", "started", "progress"] and evts[2]["slow"]
    assert kinds(evts).count("accepted") == 1 and "failed" not in kinds(evts)


async def test_hard_timeout_fails_then_retries_then_ends(
    js: JetStreamContext, prefix: str, start_daemon: Any, long_clip: Path, tmp_path: Path
) -> None:
    await start_daemon()
    out = tmp_path / "hard.mp4"
    spec = job("hard", long_clip, out, preset="veryslow", width=640, height=480)
    spec["timeouts"] = {"hard_seconds": 1.0}
    await submit(js, prefix, spec)

    async def final() -> bool:
        evts = await events(js, prefix, "hard")
        return any(e["kind"] == "failed" and e["final"] for e in evts)

    await until(final, 90.0)
    evts = await events(js, prefix, "hard")
    failed = [e for e in evts if e["kind"] == "failed"]
    assert [f["error_kind"] for f in failed] == ["timeout", "timeout"]
    assert [f["final"] for f in failed] == [False, True]
    assert "retrying" in kinds(evts) and "completed" not in kinds(evts)
    assert not out.exists()


async def test_pause_past_limit_is_resumed_and_finishes_once(
    js: JetStreamContext,
    nc: NATS,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    d = await start_daemon(pause_limit=1.0)
    out = tmp_path / "pl.mp4"
    await submit(js, prefix, job("pl", long_clip, out, preset="slow", width=640, height=480))
    await until(has(js, prefix, "pl", "started"))
    cmd = {"v": 1, "verb": "pause", "job_id": "pl"}
    reply = await nc.request(f"{prefix}.ctl.n1.pause", json.dumps(cmd).encode(), timeout=5)
    assert json.loads(reply.data)["ok"]
    handle = d.running.get("pl")
    assert handle is not None and handle.paused_since is not None

    async def resumed() -> bool:
        h = d.running.get("pl")
        return h is None or (h.paused_since is None and h.paused_total >= 1.0)

    await until(resumed, 30.0)
    # No unpause was sent: the daemon resumed ffmpeg itself, and the job ends here, once.
    await until(has(js, prefix, "pl", "completed"), 90.0)
    evts = await events(js, prefix, "pl")
    assert kinds(evts).count("accepted") == 1 and kinds(evts).count("completed") == 1
    assert out.exists()


async def test_watcher_resumes_past_pause_limit_and_reports_slow_once() -> None:
    """The watcher alone: paused time does not count toward the soft timeout; slow fires once."""
    jobs = RunningJobs()
    handle = JobHandle("w", "cpu")
    jobs.add(handle)
    count = {"wpi": 0, "slow": 0}

    async def in_progress() -> None:
        count["wpi"] += 1

    async def slow() -> None:
        count["slow"] += 1

    hooks = WatchHooks(in_progress, slow)
    assert jobs.pause("w", True)
    task = asyncio.create_task(watch_job(handle, hooks, ack_wait=0.8, pause_limit=1.2, soft_s=1.0))
    try:
        for _ in range(200):
            if handle.paused_since is None:
                break
            await asyncio.sleep(0.05)
        assert handle.paused_since is None and handle.paused_total >= 1.2
        assert count["slow"] == 0  # the pause was longer than the soft timeout: not counted
        await until(lambda: _at_least(count, "slow", 1), 10.0)
        await until(lambda: _at_least(count, "wpi", 3), 10.0)  # acks go on, paused or not
        assert count["slow"] == 1 and handle.slow
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _at_least(count: dict[str, int], key: str, n: int) -> bool:
    return count[key] >= n
