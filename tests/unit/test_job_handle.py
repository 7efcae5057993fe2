"""One running job's handle: its single pause clock, its stop reason, signals to its ffmpeg.

The clock arithmetic runs on a hand-driven clock, so nothing here depends on machine speed; the
tests that need real time (the watcher's pause limit, a real process) only wait, bounded.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from daemon.errors import JobCancelled, JobTimeout
from daemon.job.handle import JobHandle, StopKind
from daemon.job.running import RunningJobs
from daemon.job.watch import WatchHooks, watch_job


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def handle_at(clock: FakeClock, job_id: str = "j") -> JobHandle:
    return JobHandle(job_id, "cpu", 2, now=clock)


# -- the pause clock --------------------------------------------------------------------------


def test_paused_time_counts_toward_no_timer() -> None:
    clock = FakeClock()
    h = handle_at(clock)
    h.arm(10.0)
    clock.t += 4
    h.pause()
    assert h.paused and h.paused_since == clock.t
    clock.t += 100  # a long pause: neither timer moves
    assert h.remaining() is None  # the hard-timeout clock stands still while paused
    assert h.active_seconds() == 4
    h.resume()
    assert not h.paused and h.paused_since is None
    assert h.paused_total == 100 == h.paused_total_s
    assert h.remaining() == 6 and h.active_seconds() == 4
    clock.t += 6
    assert h.remaining() == 0.0
    with pytest.raises(JobTimeout, match="hard timeout of 10 s"):
        h.check()


def test_pause_and_resume_are_idempotent_and_add_up() -> None:
    clock = FakeClock()
    h = handle_at(clock)
    h.pause()
    clock.t += 2
    h.pause()  # already paused: the pause still started 2 s ago
    clock.t += 1
    h.resume()
    h.resume()
    clock.t += 5
    h.pause()
    clock.t += 4
    assert h.paused_total == 3  # finished pauses only
    assert h.active_seconds() == 5  # 12 s since start, 7 of them paused
    h.resume()
    assert h.paused_total == 7


def test_arm_keeps_the_first_deadline_and_ignores_earlier_pauses() -> None:
    clock = FakeClock()
    h = handle_at(clock)
    h.pause()
    clock.t += 50
    h.resume()  # paused before the operation armed its deadline
    h.arm(10.0)
    h.arm(1.0)  # a second arm (another step of the operation) changes nothing
    clock.t += 3
    assert h.remaining() == 7


async def test_the_watcher_resumes_a_pause_past_the_limit_on_the_same_clock() -> None:
    jobs = RunningJobs()
    h = JobHandle("w", "cpu")
    jobs.add(h)
    slow_at: list[tuple[float, float]] = []

    async def in_progress() -> None:
        return None

    async def slow() -> None:
        slow_at.append((h.active_seconds(), h.paused_total))

    assert jobs.pause("w", True)
    watcher = asyncio.create_task(
        watch_job(h, WatchHooks(in_progress, slow), ack_wait=60, pause_limit=0.1, soft_s=0.05)
    )
    try:
        for _ in range(1000):  # bounded: about 10 s at most
            if slow_at:
                break
            await asyncio.sleep(0.01)
        # Resumed by the watcher (no unpause was sent), and only then slow: the pause, twice as
        # long as the soft timeout, did not count toward it.
        assert not h.paused and h.paused_total >= 0.1
        assert len(slow_at) == 1 and slow_at[0][0] >= 0.05 and slow_at[0][1] == h.paused_total
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)


# -- the stop reason --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "kept"),
    [
        ([(StopKind.DRAIN, "node draining"), (StopKind.SHUTDOWN, "forced stop")],
         (StopKind.SHUTDOWN, "forced stop")),
        ([(StopKind.SHUTDOWN, "forced stop"), (StopKind.DRAIN, "node draining")],
         (StopKind.SHUTDOWN, "forced stop")),
        ([(StopKind.DRAIN, "node draining"), (StopKind.CANCEL, "operator")],
         (StopKind.CANCEL, "operator")),
        ([(StopKind.CANCEL, "operator"), (StopKind.DRAIN, "node draining"),
          (StopKind.TIMEOUT, "hard timeout"), (StopKind.SHUTDOWN, "forced stop")],
         (StopKind.CANCEL, "operator")),
        ([(StopKind.TIMEOUT, "hard timeout"), (StopKind.CANCEL, "operator")],
         (StopKind.CANCEL, "operator")),
        ([(StopKind.SHUTDOWN, "forced stop"), (StopKind.TIMEOUT, "hard timeout")],
         (StopKind.TIMEOUT, "hard timeout")),
        ([(StopKind.CANCEL, "first"), (StopKind.CANCEL, "second")], (StopKind.CANCEL, "first")),
    ],
)  # fmt: skip
def test_the_strongest_stop_request_wins(
    requests: list[tuple[StopKind, str]], kept: tuple[StopKind, str]
) -> None:
    h = JobHandle("s")
    for kind, reason in requests:
        h.stop(kind, reason)
    assert h.stopped is not None and (h.stopped.kind, h.stopped.reason) == kept


def test_cancel_without_a_reason_says_cancelled() -> None:
    h = JobHandle("c")
    assert h.stopped is None
    h.cancel("")
    assert h.stopped is not None and h.stopped.kind is StopKind.CANCEL
    assert h.stopped.reason == "cancelled"
    with pytest.raises(JobCancelled, match="cancelled"):
        h.check()


async def test_a_stop_wakes_waiters_and_cancels_the_operation() -> None:
    h = JobHandle("t")
    op = asyncio.create_task(asyncio.Event().wait())
    h.run_in(op)
    woken = asyncio.ensure_future(h.changed())
    h.stop(StopKind.DRAIN, "node draining")
    await asyncio.wait_for(woken, 10)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(op, 10)
    with pytest.raises(JobCancelled, match="node draining"):
        await h.ready()


async def test_a_paused_job_waits_in_ready_until_resumed_or_stopped() -> None:
    h = JobHandle("r")
    h.pause()
    waiting = asyncio.create_task(h.ready())
    await asyncio.sleep(0)
    assert not waiting.done()
    h.resume()
    await asyncio.wait_for(waiting, 10)
    h.pause()
    waiting = asyncio.create_task(h.ready())
    await asyncio.sleep(0)
    h.cancel("gone")
    with pytest.raises(JobCancelled, match="gone"):
        await asyncio.wait_for(waiting, 10)


def test_the_registry_reaches_handles_by_id() -> None:
    jobs = RunningJobs()
    first, again = JobHandle("a"), JobHandle("a", attempt=2)
    other = JobHandle("b")
    jobs.add(first)
    jobs.add(other)
    assert jobs.ids() == ["a", "b"] and len(jobs) == 2
    assert not jobs.cancel("nope", "x") and not jobs.pause("nope", True)
    assert jobs.pause("a", True) and first.paused
    assert jobs.pause("a", False) and not first.paused
    assert jobs.cancel("b", "operator")
    assert other.stopped is not None and other.stopped.reason == "operator"
    assert jobs.stop_all(StopKind.DRAIN, "node draining") == 2
    assert first.stopped is not None and first.stopped.kind is StopKind.DRAIN
    assert other.stopped.kind is StopKind.CANCEL  # a drain does not undo a cancel
    jobs.add(again)  # a redelivered attempt of `a` on this node
    jobs.remove(first)  # the old attempt's end does not forget the new one
    assert jobs.get("a") is again
    jobs.remove(again)
    assert jobs.get("a") is None and jobs.ids() == ["b"]


# -- signals ----------------------------------------------------------------------------------


def test_signals_reach_whichever_process_is_attached(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[tuple[int, signal.Signals]] = []
    monkeypatch.setattr("daemon.job.handle.signal_group", lambda pid, sig: sent.append((pid, sig)))
    h = JobHandle("p")
    h.pause()  # nothing attached yet: no signal, but the next run is held
    assert sent == [] and h.pid is None
    h.attach(101)  # a run attached while paused is stopped at once
    h.resume()
    h.detach()
    h.pause()  # between runs: nobody to signal
    h.resume()
    h.attach(202)  # the second pass
    h.pause()
    h.resume()
    assert sent == [
        (101, signal.SIGSTOP),
        (101, signal.SIGCONT),
        (202, signal.SIGSTOP),
        (202, signal.SIGCONT),
    ]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _until_state(pid: int, stopped: bool) -> None:
    for _ in range(1000):  # bounded: about 10 s at most
        if (await asyncio.to_thread(_state, pid) == "T") == stopped:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"process {pid} never reached stopped={stopped}")


async def test_pause_and_resume_reach_a_real_process_group() -> None:
    proc = await asyncio.create_subprocess_exec("sleep", "60", start_new_session=True)
    try:
        h = JobHandle("real")
        h.attach(proc.pid)
        h.pause()
        await _until_state(proc.pid, stopped=True)
        h.resume()
        await _until_state(proc.pid, stopped=False)
    finally:
        proc.kill()
        await proc.wait()
