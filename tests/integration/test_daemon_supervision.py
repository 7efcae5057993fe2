"""The daemon's long-lived tasks under supervision, from the failure side.

Each test injects one unexpected exception into a real daemon (real nats-server and ffmpeg) and
shows what the policy promises: the outbox publisher, a puller and a job's watcher are restarted
and the job still ends once, with each of its events stored once; a crashed watchdog stops the
daemon with status 1. Every wait is bounded; nothing is timed.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from daemon.app import Daemon
from daemon.job.watch import watch_job
from daemon.main import serve_daemon
from daemon.pull.puller import PoolPuller
from tests.support.daemons import config, events, has, job, kinds, submit, until


def crash_once(real: Callable[..., Awaitable[Any]], fired: list[str]) -> Callable[..., Any]:
    """`real`, except that its first call raises (an unexpected bug, not a broker error)."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not fired:
            fired.append("crashed")
            raise RuntimeError("injected crash")
        return await real(*args, **kwargs)

    return wrapper


async def ended_once(js: JetStreamContext, prefix: str, job_id: str) -> None:
    evts = await events(js, prefix, job_id)
    seen = Counter(kinds(evts))
    assert seen["accepted"] == 1 and seen["started"] == 1 and seen["completed"] == 1, seen
    assert "failed" not in seen and "interrupted" not in seen, seen
    ids = [e["event_id"] for e in evts]
    assert len(ids) == len(set(ids)), "an event was stored twice"


async def test_outbox_publisher_crash_is_restarted_and_events_arrive_once(
    js: JetStreamContext,
    prefix: str,
    start_daemon: Any,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    d: Daemon = await start_daemon()
    journal, outbox = d.backend.raw_journal, d.backend.outbox
    assert await outbox.flush(30)  # so the crash falls on the job's events
    fired: list[str] = []
    # After the PubAck, before the rows are marked sent: the restarted publisher sends them
    # again, and the events stream drops the copies by their event id.
    monkeypatch.setattr(journal, "mark_sent", crash_once(journal.mark_sent, fired))
    await submit(js, prefix, job("sup-out", clip, tmp_path / "sup-out.mp4"))
    await until(has(js, prefix, "sup-out", "completed"))
    assert fired and d.supervisor.restarts["outbox-publisher"] == 1
    assert outbox.duplicates >= 1  # the re-send happened, and was deduplicated
    assert any("outbox-publisher crashed" in r.getMessage() and r.exc_info for r in caplog.records)
    await ended_once(js, prefix, "sup-out")
    assert d.exit_code == 0 and not d.stopped.is_set()


async def test_puller_crash_is_restarted_and_the_job_runs_once(
    js: JetStreamContext,
    prefix: str,
    start_daemon: Any,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fired: list[str] = []
    real_sweep = PoolPuller._sweep

    async def sweep(self: PoolPuller) -> bool:
        return bool(await crash_once(real_sweep, fired)(self))

    d: Daemon = await start_daemon()
    # Now, so the crash falls on the sweep that the job's submit wakes.
    monkeypatch.setattr(PoolPuller, "_sweep", sweep)
    await submit(js, prefix, job("sup-pull", clip, tmp_path / "sup-pull.mp4"))
    await until(has(js, prefix, "sup-pull", "completed"))
    assert fired and d.supervisor.restarts["pull-cpu"] == 1
    assert d.pullers.pools == ["cpu"]
    await ended_once(js, prefix, "sup-pull")
    assert d.exit_code == 0 and not d.stopped.is_set()


async def test_job_watcher_crash_is_restarted_and_the_job_ends_once(
    js: JetStreamContext,
    prefix: str,
    start_daemon: Any,
    clip: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fired: list[str] = []
    monkeypatch.setattr("daemon.job.run.watch_job", crash_once(watch_job, fired))
    d: Daemon = await start_daemon()
    await submit(js, prefix, job("sup-watch", clip, tmp_path / "sup-watch.mp4"))
    await until(has(js, prefix, "sup-watch", "completed"))
    assert fired and d.supervisor.restarts["watch-default.sup-watch"] == 1
    await ended_once(js, prefix, "sup-watch")


async def test_watchdog_crash_stops_the_daemon_with_status_1(
    nats_url: str,
    js: JetStreamContext,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def broken_watchdog(*_: Any) -> None:
        raise RuntimeError("injected crash")

    monkeypatch.setattr("daemon.app.watchdog_task", broken_watchdog)
    d = Daemon(config(nats_url, prefix, tmp_path / "wd", "wd"))
    code = await asyncio.wait_for(serve_daemon(d), 120)
    assert code == 1 and d.exit_code == 1 and d.stopped.is_set()
