"""The audit after a stage settles: what happened to every job, by the definitions in docs/chaos.md.

Per job (only jobs whose submission the API confirmed):
- completed exactly once: one `completed` event on the stream and no `started` after it;
- run more than once: two or more distinct `completed` events, or a `started` event later than
  its first `completed` (the job ran again after its result was in);
- failed: it ended with `failed` (`final: true`) or `cancelled` and never completed;
- stuck: no terminal event, and its message is still in the jobs stream (queued or running);
- lost: no terminal event, and its message is gone from the jobs stream.
Redelivery latency after a daemon kill: for each job whose newest event before the kill came
from the killed node and was not terminal, from that event to the job's first `accepted` after
the kill, on any node.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext

from control.devstack.chaos.eventlog import Ev, EventLog, completed_ids
from control.devstack.chaos.ledger import Episode
from control.devstack.chaos.workload import Submission

RUNNING_KINDS = frozenset({"accepted", "started", "progress", "output"})


@dataclass
class PhaseTally:
    phase: str
    episodes: int = 0
    submitted: int = 0
    unconfirmed: int = 0
    exactly_once: int = 0
    more_than_once: int = 0
    failed: int = 0
    lost: int = 0
    stuck: int = 0
    pg_mismatch: int = 0
    latencies: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: Job ids behind the non-zero figures, for whoever follows a failure up.
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, what: str, job_id: str) -> None:
        bucket = self.examples.setdefault(what, [])
        if len(bucket) < 5:
            bucket.append(job_id)

    def latency(self) -> tuple[float, float, float] | None:
        if not self.latencies:
            return None
        return min(self.latencies), statistics.median(self.latencies), max(self.latencies)


@dataclass
class StoreCount:
    """Events stream against Postgres, for one stage."""

    stream_messages: int = 0
    stream_events: int = 0
    stream_untrusted: int = 0
    pg_events: int = 0
    pg_bad: int = 0
    missing: int = 0  # on the stream, in neither job_events nor bad_events
    extra: int = 0  # in job_events from the stream, but not on it
    missing_seqs: list[int] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.missing == 0 and self.extra == 0


def rerun(events: list[Ev]) -> bool:
    done = [e for e in events if e.kind == "completed"]
    if len(completed_ids(events)) >= 2:
        return True
    if not done:
        return False
    first = min(e.ts for e in done)
    return any(e.kind == "started" and e.ts > first for e in events)


def classify(
    tally: PhaseTally,
    subs: list[Submission],
    by_job: dict[str, list[Ev]],
    queued: set[str],
    pg_states: dict[str, str],
) -> None:
    for sub in subs:
        if not sub.confirmed:
            tally.unconfirmed += 1
            tally.note("unconfirmed", sub.job_id)
            continue
        tally.submitted += 1
        events = by_job.get(sub.job_id, [])
        done = completed_ids(events)
        terminal = any(e.terminal for e in events)
        state = pg_states.get(sub.job_id)
        if rerun(events):
            tally.more_than_once += 1
            tally.note("more_than_once", sub.job_id)
        elif len(done) == 1:
            tally.exactly_once += 1
        elif terminal:
            tally.failed += 1
            tally.note("failed", sub.job_id)
        elif sub.job_id in queued:
            tally.stuck += 1
            tally.note("stuck", sub.job_id)
        else:
            tally.lost += 1
            tally.note("lost", sub.job_id)
        expect = "completed" if done else None
        if expect is not None and state != expect:
            tally.pg_mismatch += 1
            tally.note("pg_mismatch", sub.job_id)


def redelivery(kills: list[Episode], by_job: dict[str, list[Ev]]) -> list[float]:
    """Seconds from each interrupted attempt's last event to the next `accepted` after the kill."""
    out: list[float] = []
    for kill in kills:
        for events in by_job.values():
            before = [e for e in events if e.ts < kill.start]
            if not before:
                continue
            last = max(before, key=lambda e: e.ts)
            if last.node_id != kill.target or last.kind not in RUNNING_KINDS:
                continue
            if any(e.terminal for e in before):
                continue
            nxt = [e.ts for e in events if e.kind == "accepted" and e.ts >= kill.start]
            if nxt:
                out.append(min(nxt) - last.ts)
    return out


async def queued_job_ids(js: JetStreamContext, stream: str) -> tuple[set[str], int]:
    """Job ids (a subject's last token) of every message still in the jobs stream, and the count."""
    info = await js.stream_info(stream, subjects_filter=">")
    subjects = info.state.subjects or {}
    return {s.rsplit(".", 1)[-1] for s in subjects}, info.state.messages


async def wait_ingested(js: JetStreamContext, stream: str, durable: str, limit_s: float) -> bool:
    """Until the control plane's ingest consumer has nothing pending or unacked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        with contextlib.suppress(Exception):
            info = await js.consumer_info(stream, durable)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return True
        await asyncio.sleep(1.0)
    return False


async def count_store(log: EventLog, database_url: str) -> StoreCount:
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT event_id, stream_seq FROM job_events WHERE stream_seq IS NOT NULL"
        )
        bad = {r["stream_seq"] for r in await conn.fetch("SELECT stream_seq FROM bad_events")}
    finally:
        await conn.close()
    pg_ids = {r["event_id"] for r in rows}
    pg_seqs = {r["stream_seq"] for r in rows}
    count = StoreCount(
        stream_messages=log.messages,
        stream_events=len(log.events),
        stream_untrusted=len(log.untrusted),
        pg_events=len(rows),
        pg_bad=len(bad),
    )
    all_seqs = [e.seq for e in log.events] + log.untrusted
    stream_ids = set(log.ids_by_seq.values())
    for seq in all_seqs:
        if seq in bad or seq in pg_seqs or log.ids_by_seq.get(seq) in pg_ids:
            continue
        count.missing += 1
        if len(count.missing_seqs) < 10:
            count.missing_seqs.append(seq)
    count.extra = len(pg_ids - stream_ids)
    return count


async def pg_job_states(database_url: str, job_ids: list[str]) -> dict[str, str]:
    conn = await asyncpg.connect(database_url, timeout=30)
    try:
        rows = await conn.fetch(
            "SELECT job_id, state FROM jobs WHERE job_id = ANY($1::text[])", job_ids
        )
    finally:
        await conn.close()
    return {r["job_id"]: r["state"] for r in rows}


def partial_files(dirs: list[Path]) -> list[str]:
    found: list[str] = []
    for root in dirs:
        with contextlib.suppress(OSError):
            found += [str(p) for p in root.rglob("*.partial")]
    return sorted(found)
