"""Strays: messages the jobs stream holds but no consumer will ever deliver.

The stream captures only submits of served pools and priorities, and its subject transform
rewrites each into the `<prefix>.jobs.…` form the consumers filter on. A token that is itself a
wildcard character (`*`, `>`) slips through: the server stores that message untransformed, under
`<prefix>.submit.…`, where nothing reads it, and with `discard: new` enough of them would make
the stream refuse every job. The leader moves each stray into the dead-letter set (payload and
headers kept, with a reason), records a failed job `stray-<stream seq>` so an operator can find
it, and deletes it from the jobs stream. Every step is idempotent, as for other dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

import asyncpg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from common.jsdelete import delete_stored
from control.deadletters.store import Advisory, Letter, publish, record
from schemas.subjects import TOKEN, Subjects

log = logging.getLogger("flotilla.deadletters")
STRAY_REASON = "stored under a subject no consumer reads (a wildcard character as a token)"


async def sweep_strays(
    js: JetStreamContext, db: asyncpg.Pool, subjects: Subjects, limit: int = 1000
) -> int:
    """Dead-letter up to `limit` strays, oldest first; returns how many."""
    stream, moved, seq = subjects.jobs_stream, 0, 1
    while moved < limit:
        try:
            msg = await js.get_msg(stream, seq, subject=subjects.strays, next=True)
            found = msg.seq or seq
        except NotFoundError:
            break
        at = msg.time or datetime.now(UTC)
        subject, tokens = msg.subject or "", (msg.subject or "").split(".")
        # <prefix>.submit.<tenant>.<pool>.<priority>.<job_id>, where it has that many tokens
        pool, priority = (tokens[3], tokens[4]) if len(tokens) == 6 else ("", "")
        tenant = tokens[2] if len(tokens) == 6 and TOKEN.match(tokens[2]) else ""
        adv = Advisory(
            type="stray", stream=stream, consumer="", stream_seq=found, timestamp=at.isoformat()
        )
        kept = {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}
        letter = Letter(
            tenant, f"stray-{found}", found, "stray", STRAY_REASON, adv, pool, priority,
            msg.data or b"", subject, kept,
        )  # fmt: skip
        dlq_seq = await publish(js, subjects, letter)
        async with db.acquire() as conn, conn.transaction():
            await record(conn, letter, dlq_seq, fail=True)
        await delete_stored(js, stream, found)
        log.warning("stray job message %d on %r dead-lettered as %s", found, subject,
                    letter.job_id)  # fmt: skip
        moved, seq = moved + 1, found + 1
    return moved


async def run_stray_sweep(
    js: JetStreamContext, db: asyncpg.Pool, subjects: Subjects, every: float, stop: asyncio.Event
) -> None:
    while not stop.is_set():
        await sweep_strays(js, db, subjects)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
