"""Daemons under test: config, hand-built job JSON, submitting and reading events back."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.js import JetStreamContext

from control.topology import TopologySettings
from daemon.config import DaemonConfig
from schemas.subjects import job_msg_id

ACK_WAIT = 3.0


TOPO = TopologySettings(ack_wait=ACK_WAIT, pools=["cpu"], node_ttl=10.0)


Event = dict[str, Any]


def config(nats_url: str, prefix: str, state: Path, node_id: str, **over: Any) -> DaemonConfig:
    raw: dict[str, Any] = {
        "node_id": node_id,
        "nats": {"url": nats_url, "prefix": prefix},
        "state_dir": str(state),
        "allowed_roots": [str(state.parent), "/tmp"],
        "pools": ["cpu"],
        "slots": {"cpu": 1},
        "threads_per_job": 1,
        "verify_hw_encoders": False,
        "heartbeat_interval": 1.0,
        "progress_interval": 1.0,  # the clips last seconds: progress must show within them
        "ack_wait": ACK_WAIT,
        "fetch_timeout": 1.0,
        "drain_deadline": 60.0,
        "retry_base_delay": 0.2,
        "retry_max_delay": 1.0,
        "handback_delay": 0.2,
        "handback_max_delay": 1.0,
        "metrics_port": 0,
        **over,
    }
    return msgspec.convert(raw, DaemonConfig)


def job(job_id: str, src: Path, out: Path | None, **op: Any) -> dict[str, Any]:
    operation = {
        "op": "transcode",
        "codec": "h264",
        "preset": "ultrafast",
        "width": 160,
        "height": 120,
        **op,
    }
    spec: dict[str, Any] = {
        "v": 1,
        "job_id": job_id,
        "input": f"file://{src}",
        "operation": operation,
        "max_attempts": 2,
    }
    if out is not None:
        spec["output"] = f"file://{out}"
    return spec


async def submit(js: JetStreamContext, prefix: str, spec: dict[str, Any]) -> None:
    tenant, priority = spec.get("tenant", "default"), spec.get("priority", "normal")
    subject = f"{prefix}.submit.{tenant}.cpu.{priority}.{spec['job_id']}"
    msg_id = job_msg_id(tenant, spec["job_id"])  # tenant-scoped, as producers now send it
    await js.publish(subject, json.dumps(spec).encode(), headers={"Nats-Msg-Id": msg_id})


async def events(js: JetStreamContext, prefix: str, job_id: str | None = None) -> list[Event]:
    stream = f"{prefix.upper()}_EVENTS"
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if seq == 0:
            continue
        msg = await js.get_msg(stream, seq)
        event = json.loads(msg.data or b"{}")
        if job_id is None or event.get("job_id") == job_id:
            out.append(event)
    return out


def kinds(evts: list[Event]) -> list[str]:
    return [e["kind"] for e in evts]


async def until(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"condition not met within {within}s")


def has(
    js: JetStreamContext, prefix: str, job_id: str, kind: str, n: int = 1
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return kinds(await events(js, prefix, job_id)).count(kind) >= n

    return check


def write_config(cfg: DaemonConfig, path: Path) -> None:
    data = msgspec.to_builtins(cfg)
    lines = []
    nats, slots, labels = data.pop("nats"), data.pop("slots"), data.pop("labels")
    for key, value in data.items():
        if value is not None and not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    lines.append("[slots]")
    lines += [f"{k} = {v}" for k, v in slots.items()]
    lines.append("[labels]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in labels.items()]
    lines.append("[nats]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in nats.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
