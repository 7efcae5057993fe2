"""Read the live fleet from NATS: the node bucket's keys, and queue depth from the consumers.

Node records themselves are the node tracker's (control/nodes.py).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas.common import PRIORITIES
from schemas.subjects import Subjects


async def node_keys(js: JetStreamContext, subjects: Subjects) -> list[str]:
    """The bucket's keys from the stream's subject list, in one request.

    Not `kv.keys()`: its watcher can end early while nodes write heartbeats, and then the whole
    fleet reads as empty (seen 3 times in 300 calls with 3 writers). A key whose last message is
    a DEL or PURGE marker is listed too, while the marker lasts.
    """
    bucket = subjects.nodes_bucket
    head = f"$KV.{bucket}."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{head}>")
    return sorted(s[len(head) :] for s in (info.state.subjects or {}))


async def bucket_born(js: JetStreamContext, subjects: Subjects) -> datetime | None:
    """When the node bucket's stream was created: it changes when the bucket is deleted and
    made again (`flotilla nats init --renew-node-bucket`), which a running watcher misses."""
    info = await js.stream_info(f"KV_{subjects.nodes_bucket}")
    return info.created


@dataclass(frozen=True, slots=True)
class PoolQueue:
    pool: str
    queued: int
    oldest_wait_s: float | None


async def pool_queue(
    js: JetStreamContext, subjects: Subjects, pool: str, now: float | None = None
) -> PoolQueue:
    """Pending messages over the pool's priority consumers and its held deadline jobs, and the
    oldest one's age."""
    now = time.time() if now is None else now
    queued = 0
    oldest: float | None = None
    for lane in (lane for prio in PRIORITIES for lane in subjects.lanes(pool, prio)):
        try:
            info = await js.consumer_info(subjects.jobs_stream, lane.consumer)
        except NotFoundError:
            continue
        pending = info.num_pending or 0
        queued += pending
        if pending and info.delivered is not None:
            try:
                msg = await js.get_msg(
                    subjects.jobs_stream,
                    seq=info.delivered.stream_seq + 1,
                    subject=lane.filter,
                    next=True,
                )
            except NotFoundError:
                continue
            if msg.time is not None:
                age = max(0.0, now - msg.time.timestamp())
                oldest = age if oldest is None else max(oldest, age)
    # Deadline jobs the leader has not released yet wait too (in no lane); the first one stored
    # is the one held longest, so a stalled release shows as a growing oldest wait.
    held = subjects.held_stored("*", pool, "*", "*")
    state = (await js.stream_info(subjects.jobs_stream, subjects_filter=held)).state
    n_held = sum((state.subjects or {}).values())
    if n_held:
        queued += n_held
        with contextlib.suppress(NotFoundError):
            msg = await js.get_msg(subjects.jobs_stream, seq=1, subject=held, next=True)
            if msg.time is not None:
                age = max(0.0, now - msg.time.timestamp())
                oldest = age if oldest is None else max(oldest, age)
    return PoolQueue(pool, queued, oldest)


async def ingest_backlog_age(
    js: JetStreamContext, subjects: Subjects, now: float | None = None
) -> float:
    """How long the oldest event not yet ingested has waited (0 with none): the ingest lag as
    it is now, not as the last batch left it. The consumer's ack floor marks what is done."""
    now = time.time() if now is None else now
    stream, durable = subjects.events_stream, subjects.ingest_consumer
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return 0.0
    if not (info.num_pending or info.num_ack_pending) or info.ack_floor is None:
        return 0.0
    try:
        msg = await js.get_msg(stream, seq=(info.ack_floor.stream_seq or 0) + 1, next=True)
    except NotFoundError:
        return 0.0
    return 0.0 if msg.time is None else max(0.0, now - msg.time.timestamp())
