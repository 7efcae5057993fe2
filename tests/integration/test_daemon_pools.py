"""Custom pools (`batch`, `cpu-archive`): served by the class their jobs need, sized like it.

A pure table for the rules (daemon.probe.capacity), then a real daemon that serves only `batch`
and runs a job submitted to it with plain nats-py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from daemon.probe.capacity import plan_slots, pool_class, pools_served, served_capacity
from schemas.subjects import Subjects
from tests.support.daemons import ACK_WAIT, config, events, has, job, kinds, until, write_config

SOFTWARE = ["libx264", "aac"]
GPU = ["libx264", "h264_nvenc"]


def test_custom_pools_follow_their_class() -> None:
    assert pool_class("batch") == "cpu"
    assert pool_class("gpu-archive", {"gpu-archive": "nvenc"}) == "nvenc"
    assert pool_class("nvenc", {"nvenc": "cpu"}) == "nvenc"  # built-in names keep their class
    assert pools_served(SOFTWARE, ["cpu", "batch"]) == ["cpu", "batch"]
    assert pools_served(SOFTWARE, ["batch", "cpu-archive"]) == ["batch", "cpu-archive"]
    classes = {"gpu-archive": "nvenc"}
    assert pools_served(SOFTWARE, ["batch", "gpu-archive"], classes) == ["batch"]
    assert pools_served(GPU, ["gpu-archive"], classes) == ["gpu-archive"]
    assert pools_served([], ["batch"]) == []  # no working software encoder: no cpu-class pool
    assert pools_served(SOFTWARE) == ["cpu"]  # nothing asked: only the built-in pools


def test_custom_pool_slots_are_measured_like_their_class() -> None:
    common: dict[str, Any] = {
        "logical_cores": 8, "threads_per_job": 2, "gpus": [], "gpu_memory_per_job_mb": 1024,
        "render_nodes": {"vaapi": 1},
    }  # fmt: skip
    classes = {"va-batch": "vaapi"}
    got = plan_slots(["cpu", "batch", "va-batch"], {"batch": 1}, classes=classes, **common)
    assert got == {"cpu": 4, "batch": 1, "va-batch": 4}
    assert plan_slots(["batch"], {"batch": 0}, **common) == {}  # overridden to 0: not served


def test_served_capacity_on_start_and_reload() -> None:
    probed = {"cpu": 2, "nvenc": 8}
    assert served_capacity(["cpu", "nvenc"], probed, {}) == {"cpu": 2, "nvenc": 8}
    assert served_capacity(["cpu"], probed, {"cpu": 0}) == {}  # overridden to 0: not served
    # Named on reload, after the probe: a custom pool is sized like its class.
    classes = {"gpu-archive": "nvenc"}
    got = served_capacity(["batch", "gpu-archive"], probed, {"batch": 1}, classes)
    assert got == {"batch": 1, "gpu-archive": 8}
    assert served_capacity(["batch"], {"nvenc": 8}, {}) == {}  # its class (cpu) is not served
    assert served_capacity(["batch", "archive"], {"batch": 3}, {}) == {"batch": 3, "archive": 3}
    assert served_capacity(["vaapi"], probed, {}) == {}  # a built-in pool the probe did not verify
    assert served_capacity(["vaapi"], probed, {"vaapi": 2}) == {"vaapi": 2}  # forced by override


async def test_daemon_serves_a_custom_pool(
    nc: NATS, nats_url: str, prefix: str, clip: Path, tmp_path: Path
) -> None:
    topo = TopologySettings(ack_wait=ACK_WAIT, pools=["cpu", "batch"], node_ttl=10.0)
    js = nc.jetstream(timeout=5)
    await ensure_topology(js, Subjects(prefix), topo)
    cfg = config(nats_url, prefix, tmp_path / "b1", "b1", pools=["batch"], slots={})
    path = tmp_path / "b1.toml"
    write_config(cfg, path)
    d = Daemon(cfg, config_path=path)
    await d.start()
    try:
        assert d.node.pools == ["batch"] and d.slots.capacity("batch") >= 1
        spec = job("in-batch", clip, tmp_path / "batch.mp4")
        spec["requirements"] = {"pool": "batch"}
        subject = f"{prefix}.submit.default.batch.normal.in-batch"
        await js.publish(subject, json.dumps(spec).encode(), headers={"Nats-Msg-Id": "in-batch"})
        await until(has(js, prefix, "in-batch", "completed"))
        evts = await events(js, prefix, "in-batch")
        assert kinds(evts)[0] == "accepted" and evts[0]["pool"] == "batch"
        assert (tmp_path / "batch.mp4").exists()
        kv = await js.key_value(f"{prefix}_nodes")
        record = json.loads((await kv.get("b1")).value or b"{}")
        assert record["capabilities"]["pools"] == ["batch"]
        assert record["heartbeat"]["slots"] == {"batch": d.slots.capacity("batch")}
        # A custom pool named on reload (SIGHUP) is served too, sized like its class.
        write_config(msgspec.structs.replace(cfg, pools=["batch", "cpu-archive"]), path)
        await d.reload()
        assert d.node.pools == ["batch", "cpu-archive"]
        assert d.slots.capacity("cpu-archive") == d.slots.capacity("batch")
        record = json.loads((await kv.get("b1")).value or b"{}")
        assert record["capabilities"]["pools"] == ["batch", "cpu-archive"]
    finally:
        await d.stop(force=True)
