"""The supervision policy from the failure side: crashes restart with back-off, or are fatal.

Back-off delays are zero here, so the tests wait only for the supervised task itself (bounded).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from common.supervise import Policy, Supervisor

QUICK = Policy(first_delay=0.0, max_delay=0.0)


class Flaky:
    """A task body that crashes its first `crashes` runs, then runs until stopped."""

    def __init__(self, crashes: int, stop: asyncio.Event) -> None:
        self.crashes, self.stop, self.runs = crashes, stop, 0
        self.healthy = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"injected crash {self.runs}")
        self.healthy.set()
        await self.stop.wait()


async def test_a_crash_is_logged_with_its_traceback_and_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fatal: list[str] = []
    sup = Supervisor(on_fatal=lambda name, exc: fatal.append(name))
    stop = asyncio.Event()
    body = Flaky(2, stop)
    task = asyncio.create_task(sup.supervise("worker", body, stop, QUICK))
    with caplog.at_level(logging.ERROR, "flotilla.supervise"):
        await asyncio.wait_for(body.healthy.wait(), 10)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert body.runs == 3 and sup.restarts["worker"] == 2 and fatal == []
    crashed = [r for r in caplog.records if "worker crashed" in r.getMessage()]
    assert len(crashed) == 2 and all(r.exc_info is not None for r in crashed)


async def test_a_task_that_keeps_crashing_is_given_up_as_fatal() -> None:
    fatal: list[tuple[str, str]] = []
    sup = Supervisor(on_fatal=lambda name, exc: fatal.append((name, str(exc))))
    stop = asyncio.Event()
    body = Flaky(100, stop)
    policy = Policy(first_delay=0.0, max_delay=0.0, give_up_after=3)
    await asyncio.wait_for(sup.supervise("loop", body, stop, policy), 10)
    assert body.runs == 3 and sup.restarts["loop"] == 2
    assert fatal == [("loop", "injected crash 3")]


async def test_a_fatal_policy_never_restarts_and_a_return_ends_it() -> None:
    fatal: list[str] = []
    sup = Supervisor(on_fatal=lambda name, exc: fatal.append(name))
    stop = asyncio.Event()
    body = Flaky(1, stop)
    await asyncio.wait_for(sup.supervise("once", body, stop, Policy(restart=False)), 10)
    assert body.runs == 1 and fatal == ["once"] and sup.restarts["once"] == 0

    async def returns() -> None:
        return None

    await asyncio.wait_for(sup.supervise("quiet", returns, stop, Policy(restart=False)), 10)
    assert fatal == ["once"]  # a clean return is not a crash


async def test_a_crash_while_stopping_is_not_fatal() -> None:
    fatal: list[str] = []
    sup = Supervisor(on_fatal=lambda name, exc: fatal.append(name))
    stop = asyncio.Event()

    async def dies_on_stop() -> None:
        await stop.wait()
        raise RuntimeError("connection closed")

    task = asyncio.create_task(sup.supervise("s", dies_on_stop, stop, Policy(restart=False)))
    await asyncio.sleep(0)
    stop.set()
    await asyncio.wait_for(task, 10)
    assert fatal == []


async def test_an_adopted_task_that_crashes_is_fatal() -> None:
    fatal: list[str] = []
    sup = Supervisor(on_fatal=lambda name, exc: fatal.append(name))
    stop = asyncio.Event()

    async def crash() -> None:
        raise RuntimeError("committer bug")

    async def ends_after_stop() -> None:
        await stop.wait()
        raise RuntimeError("closing")

    crashed = asyncio.create_task(crash())
    later = asyncio.create_task(ends_after_stop())
    sup.adopt("journal-commit", crashed, stop)
    sup.adopt("other", later, stop)
    await asyncio.gather(crashed, return_exceptions=True)
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    stop.set()
    await asyncio.gather(later, return_exceptions=True)
    await asyncio.sleep(0)
    assert fatal == ["journal-commit"]
