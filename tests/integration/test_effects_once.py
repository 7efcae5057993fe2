"""Effects once: a lost ack never makes a job run twice, and a restarted daemon hands its
interrupted jobs back at once. Real nats-server, real daemons (in-process and as subprocesses),
real ffmpeg.

Each test makes its own topology with the `ack_wait` it needs: a short one where a lost ack must
show up as a redelivery inside the test, a long one (600 s) where only the daemon's nak can
explain a redelivery inside the test's bound.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

import daemon.job.end as end
from control.service import ControlPlane
from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from daemon.config import DaemonConfig
from daemon.job.handle import JobHandle
from daemon.job.lease import settle
from daemon.journal.store import Journal
from schemas.subjects import Subjects
from tests.support.controlplane import control_config
from tests.support.daemons import config, events, has, job, kinds, submit, until, write_config


async def _topology(nc: NATS, prefix: str, ack_wait: float) -> JetStreamContext:
    js = nc.jetstream(timeout=5)
    await ensure_topology(js, Subjects(prefix), TopologySettings(ack_wait=ack_wait, pools=["cpu"]))
    return js


@pytest_asyncio.fixture
async def spawned() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    procs: list[asyncio.subprocess.Process] = []
    yield procs
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _spawn(
    procs: list[asyncio.subprocess.Process], cfg: DaemonConfig, path: Path, module: str
) -> asyncio.subprocess.Process:
    write_config(cfg, path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, "--config", str(path),
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    procs.append(proc)
    return proc


async def _jobs_left(js: JetStreamContext, prefix: str) -> int:
    return (await js.stream_info(Subjects(prefix).jobs_stream)).state.messages


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_kill_between_terminal_publish_and_ack_does_not_run_again(
    nc: NATS, nats_url: str, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path,
    spawned: list[asyncio.subprocess.Process],
) -> None:  # fmt: skip
    """The daemon dies right after `completed` is PubAck'd; the restarted one gets the message
    again (its ack never happened) and must settle it from its journal, not run it."""
    js = await _topology(nc, prefix, ack_wait=5.0)
    cfg = config(nats_url, prefix, tmp_path / "e1", "e1", ack_wait=5.0)
    proc = await _spawn(spawned, cfg, tmp_path / "e1.toml", "tests.support.ack_crash_child")
    out = tmp_path / "out" / "e.mp4"
    out.parent.mkdir()
    await submit(js, prefix, job("e", clip, out))
    assert await asyncio.wait_for(proc.wait(), 120) == -signal.SIGKILL
    evts = await events(js, prefix, "e")
    assert kinds(evts).count("completed") == 1  # published before the crash
    assert await _jobs_left(js, prefix) == 1  # and never acked
    before = (_sha256(out), out.stat().st_mtime_ns)

    d = await start_daemon("e1", ack_wait=5.0)  # the same node: same journal
    await until(lambda: _gone(js, prefix), 120.0)  # redelivered after ack_wait, then acked
    evts = await events(js, prefix, "e")
    assert kinds(evts).count("accepted") == 1 and kinds(evts).count("started") == 1
    assert kinds(evts).count("completed") == 1
    assert (_sha256(out), out.stat().st_mtime_ns) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.mp4"]
    assert d.running.ids() == []


async def test_restart_acks_a_job_that_ended_before_the_crash_took_its_ack(
    nc: NATS, nats_url: str, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path,
    spawned: list[asyncio.subprocess.Process],
) -> None:  # fmt: skip
    """The same crash, with an ack_wait far past the test's bound and a second node waiting: the
    restarted daemon acks the message from its journal at start-up, so JetStream never hands the
    ended job to the other node (which would run it again)."""
    js = await _topology(nc, prefix, ack_wait=600.0)
    cfg = config(nats_url, prefix, tmp_path / "e2", "e2", ack_wait=600.0)
    proc = await _spawn(spawned, cfg, tmp_path / "e2.toml", "tests.support.ack_crash_child")
    out = tmp_path / "out2" / "e.mp4"
    out.parent.mkdir()
    await submit(js, prefix, job("e2", clip, out))
    assert await asyncio.wait_for(proc.wait(), 120) == -signal.SIGKILL
    assert await _jobs_left(js, prefix) == 1  # completed published, never acked
    other = await start_daemon("other", ack_wait=600.0)

    d = await start_daemon("e2", ack_wait=600.0)  # same journal: settles at start-up
    await until(lambda: _gone(js, prefix), 60.0)  # 600 s ack_wait: only the restart explains it
    evts = await events(js, prefix, "e2")
    assert kinds(evts).count("accepted") == 1 and kinds(evts).count("completed") == 1
    assert {e["node_id"] for e in evts} == {"e2"} and other.running.ids() == []
    assert await d.backend.raw_journal.unsettled_ends() == []


async def test_a_restart_past_the_lease_makes_the_rerun_elsewhere_stand_down(
    nc: NATS, nats_url: str, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path,
    spawned: list[asyncio.subprocess.Process], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The same crash, but the node comes back only after `ack_wait`: JetStream has handed the
    ended job to another node, which is running it again. The restarted node still acks the
    message from its journal, so the other attempt finds it gone at its commit and stands down:
    one `completed`, the first run's output untouched. (Seen in `flotilla sim`: a node killed
    between its `completed` and its ack and restarted a minute later; the job ended twice.)

    No step waits on a clock: the rerun is paused as it is taken (the node's own pause, which
    holds its ffmpeg), so it cannot end before the restart's ack however fast the machine is;
    the suite's per-test timeout is the only bound."""
    js = await _topology(nc, prefix, ack_wait=5.0)
    cfg = config(nats_url, prefix, tmp_path / "e3", "e3", ack_wait=5.0)
    proc = await _spawn(spawned, cfg, tmp_path / "e3.toml", "tests.support.ack_crash_child")
    out = tmp_path / "out3" / "e.mp4"
    out.parent.mkdir()
    await submit(js, prefix, job("e3", clip, out))
    assert await proc.wait() == -signal.SIGKILL
    assert await _jobs_left(js, prefix) == 1  # completed published, never acked
    before = (_sha256(out), out.stat().st_mtime_ns)

    other = Daemon(config(nats_url, prefix, tmp_path / "other", "other", ack_wait=5.0))
    taken, left = asyncio.Event(), asyncio.Event()
    add, remove = other.running.add, other.running.remove

    def add_paused(handle: JobHandle) -> None:
        add(handle)
        handle.pause()  # before its ffmpeg starts: held until resumed
        taken.set()

    def remove_seen(handle: JobHandle) -> None:
        remove(handle)
        left.set()

    monkeypatch.setattr(other.running, "add", add_paused)
    monkeypatch.setattr(other.running, "remove", remove_seen)
    await other.start()
    try:
        await taken.wait()  # redelivered to it once the crashed node's lease ran out
        assert other.running.ids() == ["e3"]
        # Same journal: its start settles the ended attempt (the server confirms the ack)
        # before it returns, lease or not.
        d = await start_daemon("e3", ack_wait=5.0)
        assert await _gone(js, prefix)
        assert await d.backend.raw_journal.unsettled_ends() == []
        assert other.running.pause("e3", False)
        await left.wait()  # the rerun ended: it found the message gone at its commit
        assert other.running.ids() == []
    finally:
        await other.stop(force=True)
    evts = await events(js, prefix, "e3")
    assert [e["node_id"] for e in evts if e["kind"] == "completed"] == ["e3"]
    assert "started" in [e["kind"] for e in evts if e["node_id"] == "other"]  # it did rerun
    assert (_sha256(out), out.stat().st_mtime_ns) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["e.mp4"]  # its partial removed


async def test_a_job_ended_by_a_node_that_stays_away_does_not_run_again(
    nc: NATS, nats_url: str, prefix: str, database_url: str, clip: Path, tmp_path: Path,
    spawned: list[asyncio.subprocess.Process], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The same crash, and the node never comes back: JetStream hands the ended job to another
    node after `ack_wait`. That node asks the control plane, which holds the job of this very
    message as completed by the first node, and acks the message instead of running it."""
    js = await _topology(nc, prefix, ack_wait=5.0)
    topology = TopologySettings(ack_wait=5.0, pools=["cpu"])
    plane = ControlPlane(control_config(nats_url, prefix, database_url, topology=topology))
    await plane.start()
    try:
        cfg = config(nats_url, prefix, tmp_path / "e4", "e4", ack_wait=5.0)
        proc = await _spawn(spawned, cfg, tmp_path / "e4.toml", "tests.support.ack_crash_child")
        out = tmp_path / "out4" / "e.mp4"
        out.parent.mkdir()
        await submit(js, prefix, job("e4", clip, out))
        assert await proc.wait() == -signal.SIGKILL
        assert await _jobs_left(js, prefix) == 1  # completed published, never acked
        before = (_sha256(out), out.stat().st_mtime_ns)
        db = plane.db
        assert db is not None
        # Its events are folded before the other node starts: the answer does not race them.
        await until(lambda: _state_is(db, "e4", "completed"))

        other = Daemon(config(nats_url, prefix, tmp_path / "other", "other", ack_wait=5.0))
        ran: list[str] = []
        add = other.running.add

        def add_seen(handle: JobHandle) -> None:
            ran.append(handle.job_id)
            add(handle)

        monkeypatch.setattr(other.running, "add", add_seen)
        await other.start()
        try:
            await until(lambda: _gone(js, prefix))  # redelivered to it, asked, acked
        finally:
            await other.stop(force=True)
        assert ran == []
        assert plane.job_end is not None and plane.job_end.answered >= 1
        skipped = other.metrics.registry.get_sample_value(
            "flotilla_jobs_total", {"outcome": "ended_elsewhere", "pool": "cpu"}
        )
        assert skipped == 1
    finally:
        await plane.stop()
    evts = await events(js, prefix, "e4")
    assert {e["node_id"] for e in evts} == {"e4"} and kinds(evts).count("completed") == 1
    assert (_sha256(out), out.stat().st_mtime_ns) == before


async def _state_is(db: asyncpg.Pool, job_id: str, state: str) -> bool:
    found = await db.fetchval("SELECT state FROM jobs WHERE job_id = $1", job_id)
    return bool(found == state)


async def _gone(js: JetStreamContext, prefix: str) -> bool:
    return await _jobs_left(js, prefix) == 0


async def test_nats_restart_between_publish_and_ack_does_not_run_again(
    nc: NATS, nats_url: str, nats_server: Any, prefix: str, start_daemon: Any, clip: Path,
    tmp_path: Path, monkeypatch: Any,
) -> None:  # fmt: skip
    """nats-server goes down after `completed` is PubAck'd and before the ack: the ack is
    retried through the reconnect and confirmed, so neither node runs the job a second time."""
    assert hasattr(nats_server, "stop"), "needs the embedded nats-server (it is restarted)"
    js = await _topology(nc, prefix, ack_wait=5.0)
    confirmed: list[bool] = []
    restarted: list[asyncio.Task[None]] = []

    async def outage_then_settle(msg: Msg, verb: bytes = b"+ACK", **kw: Any) -> bool:
        if not confirmed and verb == b"+ACK":
            await nats_server.stop()

            async def back() -> None:
                await asyncio.sleep(2.0)
                await nats_server.start()

            restarted.append(asyncio.create_task(back()))
        result = await settle(msg, verb, **kw)
        confirmed.append(result)
        return result

    monkeypatch.setattr(end, "settle", outage_then_settle)  # both daemons run in this process
    await start_daemon("r1", ack_wait=5.0)
    await start_daemon("r2", ack_wait=5.0)  # whichever runs it, the other would take a redelivery
    out = tmp_path / "r.mp4"
    await submit(js, prefix, job("r", clip, out))
    await until(lambda: _settled(confirmed), 120.0)  # no NATS call of ours during the outage
    await asyncio.gather(*restarted)
    await until(lambda: _gone(js, prefix), 120.0)
    assert confirmed[0] is True
    evts = await events(js, prefix, "r")
    assert kinds(evts).count("accepted") == 1 and kinds(evts).count("completed") == 1
    done = next(e for e in evts if e["kind"] == "completed")
    assert [e["node_id"] for e in evts if e["kind"] == "accepted"] == [done["node_id"]]
    assert _sha256(out) == done["result"]["outputs"][0]["sha256"]


async def _settled(confirmed: list[bool]) -> bool:
    return bool(confirmed)


async def test_restart_hands_interrupted_job_back_without_waiting_ack_wait(
    nc: NATS, nats_url: str, prefix: str, start_daemon: Any, long_clip: Path, tmp_path: Path,
    spawned: list[asyncio.subprocess.Process],
) -> None:  # fmt: skip
    """With ack_wait at 600 s, only the restarted daemon's nak can explain a redelivery within
    the test's bound."""
    js = await _topology(nc, prefix, ack_wait=600.0)
    cfg = config(nats_url, prefix, tmp_path / "h1", "h1", ack_wait=600.0)
    proc = await _spawn(spawned, cfg, tmp_path / "h1.toml", "daemon.main")
    out = tmp_path / "h.mp4"
    await submit(js, prefix, job("h", long_clip, out, preset="medium", width=640, height=480))
    await until(has(js, prefix, "h", "started"), 120.0)
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    t0 = time.monotonic()
    await start_daemon("h1", ack_wait=600.0)
    await until(has(js, prefix, "h", "accepted", 2), 120.0)
    print(f"redelivered {time.monotonic() - t0:.2f} s after the restart began (ack_wait 600 s)")
    await until(has(js, prefix, "h", "completed"), 120.0)
    evts = await events(js, prefix, "h")
    assert "interrupted" in kinds(evts) and kinds(evts).count("completed") == 1
    assert sorted(e["attempt"] for e in evts if e["kind"] == "accepted") == [1, 2]


async def test_stale_hand_back_is_never_sent(tmp_path: Path, nc: NATS, prefix: str) -> None:
    """An interrupted attempt whose lease may have run out is not naked: JetStream acts on a nak
    by stream sequence and would take the job from whichever node holds it now."""
    from daemon.job.redelivery import hand_back_interrupted
    from daemon.journal.deliveries import Delivery
    from tests.support.journal import accepted

    journal = await Journal.open(tmp_path / "j.sqlite3")
    try:
        naks: list[str] = []

        async def answer(msg: Msg) -> None:  # as JetStream does: note the nak, confirm it
            naks.append(f"{msg.subject} {msg.data.decode()}")
            await msg.respond(b"")

        sub = await nc.subscribe(f"{prefix}.ack.>", cb=answer)
        old = time.time() - 60.0
        for job_id, alive_at in (("fresh", time.time()), ("stale", old)):
            ev = accepted(job_id)
            d = Delivery(job_id, 1, 7, f"{prefix}.ack.{job_id}", alive_at)
            await journal.job_received(job_id, 1, stream_seq=7, subject="s", pool="cpu",
                                       priority="normal", spec=b"{}", events=[ev])  # fmt: skip
            await journal.record(delivery=d)
        assert await journal.recover("n") != []
        await hand_back_interrupted(journal, nc, ack_wait=30.0)
        await nc.flush()
        await sub.unsubscribe()
        assert naks == [f"{prefix}.ack.fresh -NAK"]
        assert await journal.interrupted_deliveries() == []  # each dealt with once
    finally:
        await journal.close()


async def test_stalled_node_and_redelivery_leave_one_output_and_one_completed(
    nc: NATS, nats_url: str, prefix: str, start_daemon: Any, long_clip: Path, tmp_path: Path,
    spawned: list[asyncio.subprocess.Process],
) -> None:  # fmt: skip
    """A node stalls (SIGSTOP) past ack_wait; JetStream hands the job to a second node; the
    first then wakes up while the second still runs it. Whichever ends last finds the job ended
    (lapsed lease or a redelivery: it asks whether the message is still queued) and commits
    nothing, so the output on disk is the one the single `completed` describes."""
    js = await _topology(nc, prefix, ack_wait=5.0)
    cfg = config(nats_url, prefix, tmp_path / "s1", "s1", ack_wait=5.0)
    proc = await _spawn(spawned, cfg, tmp_path / "s1.toml", "daemon.main")
    outdir = tmp_path / "stall"
    outdir.mkdir()
    out = outdir / "s.mp4"
    await submit(js, prefix, job("s", long_clip, out, preset="medium", width=640, height=480))
    await until(has(js, prefix, "s", "started"), 120.0)
    proc.send_signal(signal.SIGSTOP)  # no more +WPI: the lease runs out after ack_wait
    try:
        await start_daemon("s2", ack_wait=5.0)
        await until(has(js, prefix, "s", "started", 2), 120.0)
    finally:
        proc.send_signal(signal.SIGCONT)
    await until(has(js, prefix, "s", "completed"), 120.0)
    await until(lambda: _gone(js, prefix), 120.0)
    await until(has(js, prefix, "s", "interrupted"), 120.0)  # the other attempt stood down
    evts = await events(js, prefix, "s")
    assert kinds(evts).count("completed") == 1
    done = next(e for e in evts if e["kind"] == "completed")
    stood_down = [e for e in evts if e["kind"] == "interrupted"]
    assert [e["attempt"] for e in stood_down] != [done["attempt"]]
    assert "already ended" in stood_down[0]["reason"]
    assert "failed" not in kinds(evts)
    assert _sha256(out) == done["result"]["outputs"][0]["sha256"]
    assert sorted(p.name for p in outdir.iterdir()) == ["s.mp4"]
