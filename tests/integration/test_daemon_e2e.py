"""The daemon end to end: real nats-server, real ffmpeg, jobs published with plain nats-py.

Producers here build job JSON by hand (no project code on the producer side). Most tests run the
daemon in-process (`Daemon`), the crash and SIGTERM tests as a real subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from daemon.app import Daemon
from daemon.config import DaemonConfig
from daemon.ffmpeg.tools import FfmpegTools
from schemas.registry import EVENT_DECODER
from schemas.subjects import Subjects
from tests.support.daemons import (
    ACK_WAIT,
    config,
    events,
    has,
    job,
    kinds,
    submit,
    until,
    write_config,
)
from tests.support.media import run_ffmpeg


async def describe(ffmpeg: str, path: Path) -> str:
    _, err = await run_ffmpeg(ffmpeg, "-i", str(path))
    return err.decode(errors="replace")


async def test_transcode_events_in_order(
    js: JetStreamContext,
    prefix: str,
    start_daemon: Any,
    clip: Path,
    tmp_path: Path,
    ffmpeg_tools: FfmpegTools,
) -> None:
    await start_daemon()
    out = tmp_path / "out" / "a.mp4"
    out.parent.mkdir()
    await submit(js, prefix, job("job-a", clip, out))
    await until(has(js, prefix, "job-a", "completed"))
    seq = [k for k in kinds(await events(js, prefix, "job-a")) if k != "output"]
    assert seq[:2] == ["accepted", "started"]
    assert seq[-1] == "completed"
    assert set(seq[2:-1]) <= {"progress"}
    (started,) = [e for e in await events(js, prefix, "job-a") if e["kind"] == "started"]
    assert started["encoder"] == "libx264" and "-progress" in " ".join(started["command"])
    info = await describe(ffmpeg_tools.ffmpeg, out)
    assert "h264" in info and "160x120" in info


async def test_two_daemons_share_within_slots(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    a, b = await start_daemon("n1"), await start_daemon("n2")
    ids = [f"share-{i}" for i in range(6)]
    for job_id in ids:
        await submit(js, prefix, job(job_id, clip, tmp_path / f"{job_id}.mp4", preset="medium"))

    async def all_done() -> bool:
        assert len(a.running) <= 1 and len(b.running) <= 1
        done = [e for e in await events(js, prefix) if e["kind"] == "completed"]
        return len(done) == len(ids)

    await until(all_done, 90.0)
    nodes = {e["node_id"] for e in await events(js, prefix) if e["kind"] == "completed"}
    assert nodes == {"n1", "n2"}


async def test_invalid_params_fail_at_once(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    await start_daemon()
    await submit(js, prefix, job("bad", clip, tmp_path / "bad.mp4", crf=99))
    await until(has(js, prefix, "bad", "failed"))
    (failed,) = await events(js, prefix, "bad")
    assert failed["final"] and failed["error_kind"] == "permanent" and failed["attempt"] == 1


async def test_poison_job_fails_after_attempts(
    js: JetStreamContext, prefix: str, start_daemon: Any, tmp_path: Path
) -> None:
    await start_daemon()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    await submit(js, prefix, job("poison", junk, tmp_path / "poison-out.mp4"))

    async def final() -> bool:
        return any(e["kind"] == "failed" and e["final"] for e in await events(js, prefix, "poison"))

    await until(final)
    evts = await events(js, prefix, "poison")
    assert "completed" not in kinds(evts)
    assert max(e["attempt"] for e in evts) <= 2
    assert [e for e in evts if e["kind"] == "failed"][-1]["reason"]
    assert not (tmp_path / "poison-out.mp4").exists()


async def test_unmet_requirements_are_handed_back(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    await start_daemon()
    spec = job("mars", clip, tmp_path / "mars.mp4")
    spec["requirements"] = {"labels": {"site": "mars"}}
    await submit(js, prefix, spec)
    await until(has(js, prefix, "mars", "handed_back", 2))
    assert set(kinds(await events(js, prefix, "mars"))) == {"handed_back"}


async def test_cancel_running_job(
    js: JetStreamContext,
    nc: NATS,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    await start_daemon()
    out = tmp_path / "cancel.mp4"
    await submit(js, prefix, job("cx", long_clip, out, preset="veryslow", width=640, height=480))
    await until(has(js, prefix, "cx", "started"))
    cmd = {"v": 1, "verb": "cancel", "job_id": "cx", "reason": "test"}
    reply = await nc.request(f"{prefix}.ctl.all.cancel", json.dumps(cmd).encode(), timeout=5)
    assert json.loads(reply.data)["ok"]
    await until(has(js, prefix, "cx", "cancelled"))
    await asyncio.sleep(ACK_WAIT + 1)  # past ack_wait: a cancelled job is not redelivered
    assert kinds(await events(js, prefix, "cx")).count("accepted") == 1
    assert not out.exists()


async def test_drain_request_finishes_running_job(
    js: JetStreamContext,
    nc: NATS,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    d = await start_daemon()
    await submit(js, prefix, job("dr", long_clip, tmp_path / "dr.mp4", preset="slow"))
    await until(has(js, prefix, "dr", "started"))
    cmd = {"v": 1, "verb": "drain", "deadline_s": 60}
    reply = await nc.request(f"{prefix}.ctl.n1.drain", json.dumps(cmd).encode(), timeout=5)
    assert json.loads(reply.data)["state"] == "draining"
    await submit(js, prefix, job("late", long_clip, tmp_path / "late.mp4"))
    await until(has(js, prefix, "dr", "completed"))
    assert await events(js, prefix, "late") == []  # a draining node takes nothing new
    d.request_resume()
    await until(has(js, prefix, "late", "completed"))


async def test_priority_high_starts_first(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip_small: Path, tmp_path: Path
) -> None:
    for prio in ("low", "normal", "high"):
        spec = job(f"p-{prio}", clip_small, tmp_path / f"{prio}.mp4")
        spec["priority"] = prio
        await submit(js, prefix, spec)
    await start_daemon()
    await until(has(js, prefix, "p-low", "completed"))
    started = [e["job_id"] for e in await events(js, prefix) if e["kind"] == "started"]
    assert started == ["p-high", "p-normal", "p-low"]


async def _spawn(cfg: DaemonConfig, path: Path) -> asyncio.subprocess.Process:
    write_config(cfg, path)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.main",
        "--config",
        str(path),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def test_sigkill_mid_encode_is_redelivered(
    js: JetStreamContext,
    nats_url: str,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    cfg = config(nats_url, prefix, tmp_path / "k1", "k1")
    proc = await _spawn(cfg, tmp_path / "k1.toml")
    outdir = tmp_path / "kill-out"
    outdir.mkdir()
    out = outdir / "k.mp4"
    try:
        await submit(js, prefix, job("k", long_clip, out, preset="medium", width=640, height=480))
        await until(has(js, prefix, "k", "started"))
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await start_daemon("k2")
        await until(has(js, prefix, "k", "completed"), 90.0)
        evts = await events(js, prefix, "k")
        assert kinds(evts).count("completed") == 1
        assert [e["node_id"] for e in evts if e["kind"] == "completed"] == ["k2"]
        assert sorted(p.name for p in outdir.iterdir()) == ["k.mp4"]
        proc = await _spawn(cfg, tmp_path / "k1.toml")
        await until(has(js, prefix, "k", "interrupted"))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)


async def test_sigterm_drains_running_job(
    js: JetStreamContext, nats_url: str, prefix: str, long_clip: Path, tmp_path: Path
) -> None:
    cfg = config(nats_url, prefix, tmp_path / "t1", "t1")
    proc = await _spawn(cfg, tmp_path / "t1.toml")
    try:
        await submit(js, prefix, job("t", long_clip, tmp_path / "t.mp4", preset="slow"))
        await until(has(js, prefix, "t", "started"))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 90) == 0
        assert "completed" in kinds(await events(js, prefix, "t"))
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_node_advertised_status_and_metrics(
    js: JetStreamContext, nc: NATS, prefix: str, start_daemon: Any
) -> None:
    d = await start_daemon(labels={"site": "lab"})
    kv = await js.key_value(f"{prefix}_nodes")
    record = json.loads((await kv.get("n1")).value or b"{}")
    assert record["capabilities"]["node_id"] == "n1"
    assert record["heartbeat"]["free_slots"] == {"cpu": 1}
    cmd = {"v": 1, "verb": "status"}
    reply = json.loads(
        (await nc.request(f"{prefix}.ctl.n1.status", json.dumps(cmd).encode(), timeout=5)).data
    )
    assert reply["ok"] and reply["state"] == "online" and reply["node_id"] == "n1"
    await until(has_node_event(js, prefix, "capabilities"))
    from prometheus_client import generate_latest

    text = generate_latest(d.metrics.registry).decode()
    assert "flotilla_slots_free" in text and "flotilla_jobs_running" in text


def has_node_event(js: JetStreamContext, prefix: str, kind: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return kind in kinds(await events(js, prefix))

    return check


async def test_nats_outage_mid_job_loses_nothing(
    js: JetStreamContext,
    nats_server: Any,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    assert hasattr(nats_server, "stop"), "needs the embedded nats-server (it is restarted)"
    await start_daemon()
    spec = job("o", long_clip, tmp_path / "o.mp4", preset="slow", width=640, height=480)
    await submit(js, prefix, spec)
    await until(has(js, prefix, "o", "started"))
    await nats_server.stop()
    await asyncio.sleep(2.0)  # progress events pile up in the outbox meanwhile
    await nats_server.start()
    await until(has(js, prefix, "o", "completed"), 90.0)
    evts = await events(js, prefix, "o")
    ids = [e["event_id"] for e in evts]
    assert len(ids) == len(set(ids))  # each event once (Nats-Msg-Id dedup)
    seq = [k for k in kinds(evts) if k not in ("progress", "output")]
    assert seq == ["accepted", "started", "completed"]
    assert [e["ts"] for e in evts] == sorted(e["ts"] for e in evts)  # in order
    assert "progress" in kinds(evts)


async def test_a_redelivery_of_a_running_job_is_adopted_not_run_again(
    js: JetStreamContext,
    nc: NATS,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    """JetStream redelivers a job whose keep-alives stopped reaching it (here: the node's
    ack_wait is longer than the consumer's, so its `+WPI` come too late) while the node still
    runs it, and the node has a free slot to fetch it: the running attempt takes the new
    delivery over; the job is not accepted or run a second time."""
    d = await start_daemon(ack_wait=60.0, slots={"cpu": 2})
    spec = job("ad", long_clip, tmp_path / "ad.mp4", preset="slow", width=640, height=480)
    await submit(js, prefix, spec)
    await until(has(js, prefix, "ad", "started"))
    cmd = {"v": 1, "verb": "pause", "job_id": "ad"}
    reply = await nc.request(f"{prefix}.ctl.n1.pause", json.dumps(cmd).encode(), timeout=5)
    assert json.loads(reply.data)["ok"]
    durable = Subjects(prefix).consumer("cpu", "normal")

    async def redelivered_twice() -> bool:
        info = await js.consumer_info(Subjects(prefix).jobs_stream, durable)
        return info.delivered.consumer_seq >= 3  # delivered, then redelivered twice

    await until(redelivered_twice, 60.0)  # the consumer's ack_wait is 3 s
    assert d.running.get("ad") is not None
    cmd["verb"] = "unpause"
    reply = await nc.request(f"{prefix}.ctl.n1.unpause", json.dumps(cmd).encode(), timeout=5)
    assert json.loads(reply.data)["ok"]
    await until(has(js, prefix, "ad", "completed"), 120.0)
    seq = [k for k in kinds(await events(js, prefix, "ad")) if k not in ("progress", "output")]
    assert seq == ["accepted", "started", "completed"]
    assert await asyncio.to_thread(lambda: list(tmp_path.glob("ad*"))) == [tmp_path / "ad.mp4"]


async def test_pause_and_unpause_running_job(
    js: JetStreamContext,
    nc: NATS,
    prefix: str,
    start_daemon: Any,
    long_clip: Path,
    tmp_path: Path,
) -> None:
    d = await start_daemon()
    spec = job("pz", long_clip, tmp_path / "pz.mp4", preset="slow", width=640, height=480)
    await submit(js, prefix, spec)
    await until(has(js, prefix, "pz", "started"))
    for verb in ("pause", "unpause"):
        cmd = {"v": 1, "verb": verb, "job_id": "pz"}
        reply = await nc.request(f"{prefix}.ctl.n1.{verb}", json.dumps(cmd).encode(), timeout=5)
        assert json.loads(reply.data)["ok"], verb
        if verb == "pause":
            assert d.running.get("pz") is not None
            await asyncio.sleep(ACK_WAIT + 1)  # paused past ack_wait: still ours, not redelivered
    await until(has(js, prefix, "pz", "completed"), 90.0)
    assert kinds(await events(js, prefix, "pz")).count("accepted") == 1


async def test_reload_changes_slots_and_labels(
    js: JetStreamContext, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    path = tmp_path / "r.toml"
    cfg = config(nats_url, prefix, tmp_path / "r1", "r1")
    write_config(cfg, path)
    d = Daemon(cfg, config_path=path)
    await d.start()
    try:
        write_config(msgspec.structs.replace(cfg, slots={"cpu": 2}, labels={"site": "x"}), path)
        await d.reload()
        assert d.slots.capacity("cpu") == 2
        kv = await js.key_value(f"{prefix}_nodes")
        record = json.loads((await kv.get("r1")).value or b"{}")
        assert record["capabilities"]["labels"] == {"site": "x"}
        assert record["heartbeat"]["slots"] == {"cpu": 2}
    finally:
        await d.stop()


async def test_an_invalid_job_id_is_reported_by_its_stream_sequence(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    """A job-id token no event may carry still ends in a failed event the control plane can
    store: named after the message's stream sequence."""
    await start_daemon()
    spec = job("bad:id", clip, tmp_path / "bad.mp4")
    ack = await js.publish(f"{prefix}.submit.default.cpu.normal.bad:id", json.dumps(spec).encode())
    await until(has(js, prefix, f"invalid-{ack.seq}", "failed"))
    (failed,) = await events(js, prefix, f"invalid-{ack.seq}")
    assert failed["final"] and failed["error_kind"] == "permanent"
    assert "job_id" in failed["reason"]
    EVENT_DECODER.decode(json.dumps(failed).encode())  # what ingest does: it is accepted


async def test_a_canary_runs_without_a_scratch_dir_and_a_transcode_with_one(
    js: JetStreamContext, nc: NATS, prefix: str, start_daemon: Any, long_clip: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A canary touches no disk, so no dir is made for it; an operation that writes files gets
    its own while it runs, removed at its end."""
    d: Daemon = await start_daemon(slots={"cpu": 2})
    canary = {"v": 1, "job_id": "dry", "input": "canary://",
              "operation": {"op": "canary", "sleep_seconds": 60}}  # fmt: skip
    await submit(js, prefix, canary)

    async def running(job_id: str) -> bool:
        held = d.running.keys()  # (tenant, job id) of each attempt running here
        return ("default", job_id) in held

    await until(lambda: running("dry"))
    assert list(d.cfg.work_dir.iterdir()) == []
    out = tmp_path / "wet.mp4"
    await submit(js, prefix, job("wet", long_clip, out, preset="veryslow", width=640, height=480))
    await until(has(js, prefix, "wet", "started"))
    assert [p.name.split(".")[1] for p in d.cfg.work_dir.iterdir()] == ["wet"]
    for job_id in ("dry", "wet"):
        cmd = {"v": 1, "verb": "cancel", "job_id": job_id, "reason": "test"}
        reply = await nc.request(f"{prefix}.ctl.all.cancel", json.dumps(cmd).encode(), timeout=5)
        assert json.loads(reply.data)["ok"]
        await until(has(js, prefix, job_id, "cancelled"))

    async def no_scratch() -> bool:
        return not any(d.cfg.work_dir.iterdir())

    await until(no_scratch)


async def test_an_outcome_is_journalled_in_one_commit_with_what_leads_up_to_it(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path
) -> None:
    """A canary's `started` (it runs no command) and a transcode's `output` events commit with
    the job's `completed`: one trip to the journal's thread, not one each."""
    d: Daemon = await start_daemon()
    await submit(js, prefix, {"v": 1, "job_id": "one", "input": "canary://",
                              "operation": {"op": "canary"}})  # fmt: skip
    await submit(js, prefix, job("two", clip, tmp_path / "two.mp4"))
    for job_id in ("one", "two"):
        await until(has(js, prefix, job_id, "completed"))
        assert kinds(await events(js, prefix, job_id))[:2] == ["accepted", "started"]

    def commits(job_id: str) -> dict[str, float]:
        """When each of the job's events was journalled: one commit stamps its rows alike."""
        with closing(sqlite3.connect(d.cfg.journal_path)) as conn:
            rows = conn.execute("SELECT kind, created_at, payload FROM outbox").fetchall()
        mine = [(kind, at) for kind, at, payload in rows
                if json.loads(payload).get("job_id") == job_id]  # fmt: skip
        return dict(mine)

    one = await asyncio.to_thread(commits, "one")
    assert one["started"] == one["completed"] != one["accepted"]
    two = await asyncio.to_thread(commits, "two")
    assert two["output"] == two["completed"] != two["started"]
