"""The free-space watermark: under it a daemon pulls nothing and says why; over it, it pulls again.

The watermark is set above the real free space (so the daemon refuses work), then lowered by a
SIGHUP-style reload of its config file; no disk is filled.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from prometheus_client import generate_latest

from daemon.app import Daemon
from daemon.diskguard import MIB, low_reason
from tests.support.daemons import config, events, has, job, submit, until, write_config

HUGE_MB = 1 << 40  # an exbibyte: more than any test machine has free
GIB = 1 << 30


def test_low_reason_by_bytes_and_percent() -> None:
    assert low_reason(2 * GIB, 10 * GIB, GIB, 0.0) is None
    assert low_reason(GIB // 2, 10 * GIB, GIB, 0.0) == (
        "disk low: 512 MiB free, under the 1024 MiB watermark"
    )
    assert low_reason(2 * GIB, 100 * GIB, 0, 5.0) == ("disk low: 2.0% free, under the 5% watermark")
    assert low_reason(2 * GIB, 100 * GIB, MIB, 1.5) is None  # both limits met
    assert low_reason(0, 0, 0, 0.0) is None  # both off


async def test_disk_watermark_holds_pulling_until_space_returns(
    js: JetStreamContext, nats_url: str, prefix: str, clip: Path, tmp_path: Path
) -> None:
    path = tmp_path / "d.toml"
    cfg = config(
        nats_url, prefix, tmp_path / "d1", "d1",
        disk_low_watermark_mb=HUGE_MB, disk_check_interval=0.2,
    )  # fmt: skip
    write_config(cfg, path)
    d = Daemon(cfg, config_path=path)
    await d.start()
    try:
        assert d.disk.reason is not None and d.disk.reason.startswith("disk low")
        kv = await js.key_value(f"{prefix}_nodes")
        record = json.loads((await kv.get("d1")).value or b"{}")
        assert record["heartbeat"]["disk_low"] is True
        await submit(js, prefix, job("held", clip, tmp_path / "held.mp4"))

        async def said_why() -> bool:
            states = [e for e in await events(js, prefix) if e["kind"] == "node_state"]
            return any(e["reason"].startswith("disk low") for e in states)

        await until(said_why)
        await asyncio.sleep(2 * cfg.fetch_timeout)  # time enough to pull, were it pulling
        assert await events(js, prefix, "held") == []
        assert "not pulling: disk low" in d.status_line()

        write_config(msgspec.structs.replace(cfg, disk_low_watermark_mb=0), path)
        await d.reload()
        assert not d.disk.low
        await until(has(js, prefix, "held", "completed"))
        states = [e["reason"] for e in await events(js, prefix) if e["kind"] == "node_state"]
        assert states[-1] == "disk space back over the watermark"
        record = json.loads((await kv.get("d1")).value or b"{}")
        assert record["heartbeat"]["disk_low"] is False

        # The periodic check reads the limits each time: a watermark over 100 % free trips it.
        d.cfg = msgspec.structs.replace(d.cfg, disk_low_watermark_percent=100.0)

        async def held_again() -> bool:
            return d.disk.low and not d.pullers.pools

        await until(held_again, 30.0)
        assert "flotilla_disk_low 1.0" in generate_latest(d.metrics.registry).decode()
    finally:
        await d.stop(force=True)
