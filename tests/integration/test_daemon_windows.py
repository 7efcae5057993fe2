"""Processing windows on a real daemon, set through the real API verb: the node applies them at
once, advertises them, keeps them across a restart and a reload, and pulls the held job only when
its injected clock enters the window. The submit is not refused because the node is closed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest_asyncio
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from prometheus_client import generate_latest

from control.api.service import ApiService, ApiSettings
from daemon.app import Daemon
from daemon.pull.windowstore import FILENAME
from schemas.subjects import Subjects
from schemas.windows import WindowRule
from tests.support.api import call, code
from tests.support.daemons import config, events, has, submit, until, write_config
from tests.support.devfleet import run_cli
from tests.support.noderecords import tracking

PARIS = ZoneInfo("Europe/Paris")
NIGHT_LOW = {"priorities": ["low"], "start": "22:00", "end": "06:00", "tz": "Europe/Paris"}
FILE_RULE = '[[windows]]\npools = ["cpu"]\nstart = "08:00"\nend = "09:00"\n'


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


@pytest_asyncio.fixture
async def api(js: JetStreamContext, nc: NATS, prefix: str) -> AsyncIterator[ApiService]:
    subjects = Subjects(prefix)
    async with tracking(js, subjects) as fleet:
        svc = ApiService(nc, subjects, ApiSettings(pools=["cpu"]), fleet)
        await svc.start()
        try:
            yield svc
        finally:
            await svc.stop()


def canary(job_id: str) -> dict[str, Any]:
    return {"v": 1, "job_id": job_id, "input": "canary://", "operation": {"op": "canary"},
            "max_attempts": 1, "priority": "low"}  # fmt: skip


async def record(js: JetStreamContext, prefix: str, node_id: str) -> dict[str, Any]:
    kv = await js.key_value(f"{prefix}_nodes")
    return dict(json.loads((await kv.get(node_id)).value or b"{}"))


def advertised(
    js: JetStreamContext, prefix: str, source: str, tiers: list[str]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        hb = (await record(js, prefix, "w1"))["heartbeat"]
        return hb.get("windows_source") == source and hb.get("open_tiers") == {"cpu": tiers}

    return check


async def low_waiting(js: JetStreamContext, prefix: str) -> tuple[int, int]:
    s = Subjects(prefix)
    info = await js.consumer_info(s.jobs_stream, s.consumer("cpu", "low"))
    return info.num_pending, info.num_ack_pending


async def polls(d: Daemon, n: int) -> None:
    """Let the node's cpu puller sweep `n` more times (its fallback poll)."""
    puller = d.pullers.puller("cpu")
    assert puller is not None
    start = puller.polled

    async def check() -> bool:
        return puller.polled >= start + n

    await until(check)


async def test_windows_set_through_the_api_survive_restart_and_reload(
    js: JetStreamContext, nc: NATS, nats_url: str, prefix: str, tmp_path: Path, api: ApiService
) -> None:
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=PARIS))
    cfg = config(nats_url, prefix, tmp_path / "w1", "w1", fetch_timeout=0.3)
    path = tmp_path / "w1.toml"
    write_config(cfg, path)
    d = Daemon(cfg, config_path=path, now=clock)
    await d.start()
    try:
        await until(advertised(js, prefix, "config", ["high", "normal", "low"]))
        # The node checks what the wire brings, whoever sent it.
        forged = b'{"v":1,"verb":"windows","windows":[{"start":"99:99","end":"01:00"}]}'
        msg = await nc.request(Subjects(prefix).ctl("w1", "windows"), forged, timeout=10)
        answer = json.loads(msg.data)
        assert answer["ok"] is False and "HH:MM" in answer["message"], answer
        assert d.windows.rules == [] and not (tmp_path / "w1" / FILENAME).exists()
        body = {"v": 1, "node_id": "w1", "windows": [NIGHT_LOW]}
        reply, headers = await call(nc, prefix, "node.windows", body)
        assert code(headers) == "ok" and reply["ok"], reply
        assert "set at run time" in reply["message"]
        assert d.windows.rules == [msgspec.convert(NIGHT_LOW, WindowRule)]
        assert (tmp_path / "w1" / FILENAME).exists()
        await until(advertised(js, prefix, "runtime", ["high", "normal"]))
        hb = (await record(js, prefix, "w1"))["heartbeat"]
        assert hb["windows"] == [{**NIGHT_LOW, "pools": [], "days": []}]

        # Every capable node is closed for low: the job is queued, not refused.
        reply, headers = await call(nc, prefix, "job.submit", {"v": 1, "job": canary("late")})
        assert code(headers) == "ok", reply
        await polls(d, 3)
        assert await events(js, prefix, "late") == [] and await low_waiting(js, prefix) == (1, 0)
    finally:
        await d.stop()

    d = Daemon(cfg, config_path=path, now=clock)  # a restart keeps the rules set at run time
    await d.start()
    try:
        assert d.windows_override == [msgspec.convert(NIGHT_LOW, WindowRule)]
        await until(advertised(js, prefix, "runtime", ["high", "normal"]))
        # A reload whose file has other windows does not drop them either.
        path.write_text(path.read_text().replace("windows = []\n", "") + FILE_RULE)
        await d.reload()
        assert d.windows.rules == [msgspec.convert(NIGHT_LOW, WindowRule)]
        await polls(d, 3)
        assert await events(js, prefix, "late") == [] and await low_waiting(js, prefix) == (1, 0)

        clock.at = datetime(2026, 6, 10, 22, 30, tzinfo=PARIS)  # the window opens
        await until(has(js, prefix, "late", "completed"))
        assert [e["kind"] for e in await events(js, prefix, "late")].count("accepted") == 1

        # Back to the file's rules: the override is gone, on disk too.
        reply, headers = await call(nc, prefix, "node.windows", {"v": 1, "node_id": "w1"})
        assert code(headers) == "ok" and "config file" in reply["message"], reply
        assert d.windows_override is None and not (tmp_path / "w1" / FILENAME).exists()
        assert [r.start for r in d.windows.rules] == ["08:00"]
        # The file's rule holds every cpu tier back outside 08:00-09:00 (UTC).
        await until(advertised(js, prefix, "config", []))
        metrics = generate_latest(d.metrics.registry).decode()
        assert 'flotilla_aged_starts_total{pool="cpu"} 0.0' in metrics
    finally:
        await d.stop()


async def test_bad_windows_requests_are_refused(
    js: JetStreamContext, nc: NATS, nats_url: str, prefix: str, tmp_path: Path, api: ApiService
) -> None:
    cases = [
        ({**NIGHT_LOW, "tz": "Nowhere/City"}, "IANA zone name"),
        ({**NIGHT_LOW, "priorities": ["urgent"]}, "high, normal, low"),
        ({**NIGHT_LOW, "end": "6pm"}, "HH:MM"),
        ({**NIGHT_LOW, "days": ["someday"]}, "mon, tue"),
        ({**NIGHT_LOW, "when": "never"}, "unknown field"),
    ]
    for bad, allowed in cases:
        body = {"v": 1, "node_id": "w1", "windows": [bad]}
        reply, headers = await call(nc, prefix, "node.windows", body)
        assert code(headers) == "400" and allowed in reply["message"], (bad, reply)
    reply, headers = await call(nc, prefix, "node.windows", {"v": 1, "node_id": "nobody"})
    assert code(headers) == "503" and "did not answer" in reply["message"]


async def test_the_cli_shows_sets_and_clears_windows(
    js: JetStreamContext, nats_url: str, prefix: str, tmp_path: Path, api: ApiService
) -> None:
    clock = Clock(datetime(2026, 6, 10, 12, 0, tzinfo=PARIS))
    cfg = config(nats_url, prefix, tmp_path / "w1", "w1")
    d = Daemon(cfg, now=clock)
    await d.start()
    conn = ("-s", nats_url, "--prefix", prefix)
    try:
        rule = "priorities=low start=22:00 end=06:00 tz=Europe/Paris days=mon,tue"
        got = await run_cli("windows", "w1", "--set", rule, "--json", *conn)
        assert got.rc == 0, got.err
        assert json.loads(got.out)["ok"] is True
        assert d.windows_override == [msgspec.convert({**NIGHT_LOW, "days": ["mon", "tue"]},
                                                      WindowRule)]  # fmt: skip
        await until(advertised(js, prefix, "runtime", ["high", "normal"]))
        shown = json.loads((await run_cli("windows", "w1", "--json", *conn)).out)
        assert shown["source"] == "runtime" and shown["open_tiers"] == {"cpu": ["high", "normal"]}
        assert [w["days"] for w in shown["windows"]] == [["mon", "tue"]]
        text = (await run_cli("windows", "w1", *conn)).out
        assert "22:00-06:00" in text and "cpu: pulling high, normal now" in text

        bad = await run_cli("windows", "w1", "--set", "start=25:00 end=01:00", *conn)
        assert bad.rc != 0 and "HH:MM" in bad.err
        ghost = await run_cli("windows", "ghost", "--clear", *conn)
        assert ghost.rc == 4 and "no node named 'ghost'" in ghost.err

        got = await run_cli("windows", "w1", "--clear", *conn)
        assert got.rc == 0 and "0 window rule(s)" in got.out, got.err
        assert d.windows_override == [] and d.windows.rules == []
        got = await run_cli("windows", "w1", "--from-config", *conn)
        assert got.rc == 0 and d.windows_override is None, got.err
    finally:
        await d.stop()


async def test_the_daemon_ages_low_work_and_counts_it(
    js: JetStreamContext, nats_url: str, prefix: str, tmp_path: Path
) -> None:
    """One slot, six high jobs queued behind one low: with aging_every = 2 the low job is the
    third to start, not the last, and the node's counter says so."""
    await submit(js, prefix, canary("old-low"))
    for i in range(6):
        await submit(js, prefix, {**canary(f"hi-{i}"), "priority": "high"})
    cfg = config(nats_url, prefix, tmp_path / "a1", "a1", aging_every=2)
    d = Daemon(cfg)
    await d.start()
    try:
        for job_id in ["old-low", *(f"hi-{i}" for i in range(6))]:
            await until(has(js, prefix, job_id, "completed"))
        started = [e["job_id"] for e in await events(js, prefix) if e["kind"] == "accepted"]
        assert started.index("old-low") == 2, started
        metrics = generate_latest(d.metrics.registry).decode()
        assert 'flotilla_aged_starts_total{pool="cpu"} 1.0' in metrics
    finally:
        await d.stop()
