"""Live per-job updates: each job event, once stored, is copied to
`<prefix>.updates.<tenant>.<job_id>.<kind>`.

`flotilla watch` follows one job there instead of subscribing to every event of the fleet, and
a producer's NATS user may read its own tenant's updates. Core NATS, fire and forget: a missed
update costs a watcher one poll of the API, never an event (those are in the events stream).
Sent by whichever instance ingested the event, once, after its batch committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from nats.aio.client import Client

from control.db.incoming import Incoming
from schemas.events import JobEvent, kind_of
from schemas.subjects import Subjects


async def publish_updates(nc: Client, subjects: Subjects, items: Sequence[Incoming]) -> None:
    for item in items:
        ev = cast("JobEvent", item.event)  # ingest passes job events only
        subject = subjects.job_updates(ev.tenant, ev.job_id, kind_of(ev))
        await nc.publish(subject, item.body.encode())
