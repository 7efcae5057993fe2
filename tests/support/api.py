"""Hand-built API request bodies."""

from __future__ import annotations

from typing import Any


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
