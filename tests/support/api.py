"""Hand-built API request bodies, and one request as a client sends it."""

from __future__ import annotations

from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from control.api.tenants import KEY_HEADER


def job(job_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "job_id": job_id,
        "input": "file:///in.mp4",
        "output": "file:///out.mp4",
        "operation": {"op": "transcode", "codec": "h264"},
    }
    body.update(extra)
    return body


async def call(
    nc: NATS, prefix: str, verb: str, body: Any, key: str | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """One API request as any client sends it (with `key` in the key header); the decoded reply
    and its headers (`Nats-Service-Error-Code` says it failed)."""
    headers = None if key is None else {KEY_HEADER: key}
    msg = await nc.request(
        f"{prefix}.api.{verb}", msgspec.json.encode(body), timeout=10, headers=headers
    )
    return msgspec.json.decode(msg.data), dict(msg.headers or {})


def code(headers: dict[str, str]) -> str:
    """The error code of a reply, or `ok`."""
    return headers.get("Nats-Service-Error-Code", "ok")
