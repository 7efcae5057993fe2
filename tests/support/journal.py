"""Event factories for the journal and outbox tests."""

from __future__ import annotations

import time

from schemas.events import Accepted, Cancelled, Completed, Progress, Started
from schemas.results import JobResult

NODE = "node-a"


def accepted(job_id: str, attempt: int = 1) -> Accepted:
    return Accepted(
        event_id=f"{job_id}-{attempt}-accepted",
        job_id=job_id,
        node_id=NODE,
        attempt=attempt,
        ts=time.time(),
        pool="cpu",
        priority="normal",
        tenant="t1",
        operation="transcode",
    )


def started(job_id: str, attempt: int = 1) -> Started:
    return Started(
        event_id=f"{job_id}-{attempt}-started",
        job_id=job_id,
        node_id=NODE,
        attempt=attempt,
        ts=time.time(),
        encoder="libx264",
    )


def progress(job_id: str, n: int, attempt: int = 1) -> Progress:
    return Progress(
        event_id=f"{job_id}-{attempt}-progress-{n}",
        job_id=job_id,
        node_id=NODE,
        attempt=attempt,
        ts=time.time(),
        percent=min(100.0, float(n)),
    )


def completed(job_id: str, attempt: int = 1) -> Completed:
    return Completed(
        event_id=f"{job_id}-{attempt}-completed",
        job_id=job_id,
        node_id=NODE,
        attempt=attempt,
        ts=time.time(),
        result=JobResult(wall_seconds=1.0, encoder="libx264"),
    )


def cancelled(job_id: str, attempt: int = 1) -> Cancelled:
    return Cancelled(
        event_id=f"{job_id}-{attempt}-cancelled",
        job_id=job_id,
        node_id=NODE,
        attempt=attempt,
        ts=time.time(),
    )
