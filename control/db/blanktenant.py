"""Give a tenant to job events from nodes older than the events' `tenant` field.

A job is named by (tenant, job_id). Such a node names only the job id, except in `accepted`,
which has always carried the tenant. The tenant is taken from an `accepted` of the same batch
or from the jobs already recorded under that id; an id several tenants use, or one not yet
seen, stays under tenant "" (logged), so mixed versions must not outlive the upgrade.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import cast

import asyncpg
import msgspec

from control.db.incoming import Incoming
from schemas.events import Accepted, JobEvent, is_job_event

log = logging.getLogger("flotilla.ingest")

TENANTS_OF = "SELECT job_id, tenant FROM jobs WHERE job_id = ANY($1::text[])"


async def fill_tenants(conn: asyncpg.Connection, items: Sequence[Incoming]) -> list[Incoming]:
    """`items` with each blank-tenant job event given its job's one tenant where that is known."""
    blank = sorted({ev.job_id for i in items if (ev := _blank(i)) is not None})
    if not blank:
        return list(items)
    known: dict[str, set[str]] = defaultdict(set)
    for accepted in (i.event for i in items if isinstance(i.event, Accepted)):
        if accepted.job_id in blank:
            known[accepted.job_id].add(accepted.tenant)
    for record in await conn.fetch(TENANTS_OF, blank):
        known[record["job_id"]].add(record["tenant"])
    out = []
    for item in items:
        ev = _blank(item)
        if ev is not None:
            tenants = known.get(ev.job_id, set())
            if len(tenants) == 1:
                item = replace(item, event=msgspec.structs.replace(ev, tenant=next(iter(tenants))))
            else:
                log.warning(
                    "event %s names no tenant and job id %s is %s: kept under tenant ''",
                    ev.event_id, ev.job_id,
                    "not known yet" if not tenants else f"used by {len(tenants)} tenants",
                )  # fmt: skip
        out.append(item)
    return out


def needs_tenant(items: Sequence[Incoming]) -> bool:
    """Whether any of `items` is a job event without a tenant (`fill_tenants` has work)."""
    return any(_blank(i) is not None for i in items)


def _blank(item: Incoming) -> JobEvent | None:
    ev = item.event
    if is_job_event(ev) and not cast("JobEvent", ev).tenant:
        return cast("JobEvent", ev)
    return None
