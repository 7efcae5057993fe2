"""Who may report on a job's attempt: the node whose event for that attempt was recorded first.

JetStream hands each delivery of a job to one node and the delivery count is the event's
`attempt`, so in an honest fleet one node reports on each (job, attempt): it accepts the job
(`accepted`, `started`…) or declines it before accepting (`handed_back`, or `failed` for a job it
cannot decode). The first event of an attempt to be recorded claims it for its node, normally
the `accepted`; any other node's events for that attempt are rejected. A claim is an INSERT … ON
CONFLICT that leaves a live claim alone, so concurrent ingestors agree on one holder. Claiming on
the first event of any kind is what lets a decline count where nobody accepted, and lets the
holder's own events arrive out of order; within a batch claims go in stream order, so a replay
of the stream names the same holders.

Not checked: events the control plane writes itself (no stream sequence: a dead letter's
`failed`), and echoes of a dead run (not newer than the job's `resubmitted_at`), which the fold
ignores. A re-submitted dead letter counts its attempts from 1 again, so a claim from before
`resubmitted_at` gives way to the new run's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import asyncpg

from control.db.incoming import Incoming
from control.fold import CONTROL_NODE, at
from schemas.events import JobEvent, is_job_event, kind_of

#: The metric label and `rejected_events.reason` of an event from a node that does not hold the
#: attempt (the only reason so far).
NOT_HOLDER = "not_holder"

#: One claim per (job, attempt), in key order so concurrent batches wait rather than deadlock,
#: and each attempt's holder: the claim just made, or the one already recorded. A claim another
#: batch committed while this one waited is not in this statement's snapshot: its holder comes
#: back NULL and is read again (HOLDERS).
CLAIM = """
WITH c AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[])
        AS c(tenant, job_id, attempt, node_id, event_id, kind, ts)
), claimed AS (
    INSERT INTO job_attempts AS a (tenant, job_id, attempt, node_id, event_id, kind, ts)
    SELECT * FROM c ORDER BY tenant, job_id, attempt
    ON CONFLICT (tenant, job_id, attempt) DO UPDATE SET
        node_id = EXCLUDED.node_id, event_id = EXCLUDED.event_id, kind = EXCLUDED.kind,
        ts = EXCLUDED.ts, claimed_at = now()
    WHERE a.ts <= (SELECT j.resubmitted_at FROM jobs AS j
                   WHERE j.tenant = a.tenant AND j.job_id = a.job_id)
    RETURNING tenant, job_id, attempt, node_id
)
SELECT c.tenant, c.job_id, c.attempt, COALESCE(claimed.node_id, a.node_id) AS node_id
FROM c
LEFT JOIN claimed USING (tenant, job_id, attempt)
LEFT JOIN job_attempts AS a USING (tenant, job_id, attempt)
"""

HOLDERS = """
SELECT tenant, job_id, attempt, node_id FROM job_attempts
JOIN unnest($1::text[], $2::text[], $3::int[]) AS k(tenant, job_id, attempt)
    USING (tenant, job_id, attempt)
"""

RECORD = """
INSERT INTO rejected_events (event_id, stream_seq, subject, node_id, job_id, attempt, kind,
                             reason, holder, payload, ts, tenant)
SELECT event_id, stream_seq, subject, node_id, job_id, attempt, kind, reason, holder,
       payload::jsonb, ts, tenant
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[],
            $8::text[], $9::text[], $10::text[], $11::timestamptz[], $12::text[])
    AS r(event_id, stream_seq, subject, node_id, job_id, attempt, kind, reason, holder, payload,
         ts, tenant)
ORDER BY event_id
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

#: (tenant, job_id, attempt)
Key = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class Rejection:
    """A job event refused because its node does not hold the attempt."""

    item: Incoming
    holder: str
    reason: str = NOT_HOLDER

    @property
    def event(self) -> JobEvent:
        return _job(self.item)

    def describe(self) -> str:
        ev = self.event
        return (
            f"{kind_of(ev)} from node {ev.node_id} for job {ev.tenant}/{ev.job_id}"
            f" attempt {ev.attempt}"
            f" rejected: the attempt is held by {self.holder}"
        )


def checked(item: Incoming) -> bool:
    """A job event read from the stream; the control plane's own events are not checked."""
    ev = item.event
    if not is_job_event(ev):
        return False
    return not (ev.node_id == CONTROL_NODE and item.stream_seq is None)


def _job(item: Incoming) -> JobEvent:
    """Only job events reach these rules (`checked` picks them)."""
    return cast("JobEvent", item.event)


def _key(item: Incoming) -> Key:
    ev = _job(item)
    return ev.tenant, ev.job_id, ev.attempt


def current_run(
    items: Sequence[Incoming], resubmitted: Mapping[tuple[str, str], datetime]
) -> list[Incoming]:
    """The events that belong to their job's current run (newer than its re-submission)."""
    if not resubmitted:
        return list(items)
    out = []
    for item in items:
        cut = resubmitted.get(_key(item)[:2])
        if cut is None or at(item.event.ts) > cut:
            out.append(item)
    return out


def first_claims(items: Sequence[Incoming]) -> list[Incoming]:
    """Per (job, attempt), the event that claims it: the first in stream order."""
    first: dict[Key, Incoming] = {}
    for item in sorted(items, key=lambda i: (i.stream_seq or 0, i.event.event_id)):
        first.setdefault(_key(item), item)
    return [first[k] for k in sorted(first)]


def rejections(items: Sequence[Incoming], holders: Mapping[Key, str]) -> list[Rejection]:
    """The events whose node is not the holder of their attempt."""
    out = []
    for item in items:
        holder = holders.get(_key(item))
        if holder is not None and holder != item.event.node_id:
            out.append(Rejection(item, holder))
    return out


async def check(
    conn: asyncpg.Connection,
    items: Sequence[Incoming],
    resubmitted: Mapping[tuple[str, str], datetime],
) -> list[Rejection]:
    """In the caller's transaction, which holds the rows of the events' jobs locked (their
    `resubmitted_at` is `resubmitted`, where set): claim the attempts nobody holds yet, and
    return the events whose node does not hold theirs."""
    candidates = [i for i in items if checked(i)]
    if not candidates:
        return []
    current = current_run(candidates, resubmitted)
    if not current:
        return []
    evs = [_job(c) for c in first_claims(current)]
    found = await conn.fetch(
        CLAIM,
        [e.tenant for e in evs],
        [e.job_id for e in evs],
        [e.attempt for e in evs],
        [e.node_id for e in evs],
        [e.event_id for e in evs],
        [kind_of(e) for e in evs],
        [at(e.ts) for e in evs],
    )
    held = {(r["tenant"], r["job_id"], r["attempt"]): r["node_id"] for r in found}
    unseen = [k for k, node in held.items() if node is None]
    if unseen:
        again = await conn.fetch(HOLDERS, *([k[n] for k in unseen] for n in range(3)))
        held.update({(r["tenant"], r["job_id"], r["attempt"]): r["node_id"] for r in again})
    return rejections(current, {k: node for k, node in held.items() if node is not None})


async def record(conn: asyncpg.Connection, rejected: Sequence[Rejection]) -> list[Rejection]:
    """Keep the rejected events; returns those not recorded before (a redelivery is not)."""
    if not rejected:
        return []
    evs = [r.event for r in rejected]
    new = await conn.fetch(
        RECORD,
        [e.event_id for e in evs],
        [r.item.stream_seq for r in rejected],
        [r.item.subject for r in rejected],
        [e.node_id for e in evs],
        [e.job_id for e in evs],
        [e.attempt for e in evs],
        [kind_of(e) for e in evs],
        [r.reason for r in rejected],
        [r.holder for r in rejected],
        [r.item.body for r in rejected],
        [at(e.ts) for e in evs],
        [e.tenant for e in evs],
    )
    ids = {r["event_id"] for r in new}
    return [r for r in rejected if r.event.event_id in ids]
