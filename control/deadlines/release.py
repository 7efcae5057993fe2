"""Earliest deadline first: the leader releases held jobs into their tier's due lane.

JetStream consumers deliver in stream order, so a job's place cannot follow its deadline once it
is in a lane. A job with a deadline is therefore submitted to `<prefix>.timed.…` (the API does so
for every job with one): the jobs stream keeps it there and no node pulls it. The leader reads
every held job (direct gets by subject, no consumer), and per pool and priority keeps the tier's
due lane just deep enough to fill the pool's free slots (from the nodes' heartbeats) plus
`margin`, releasing the earliest deadline first. Nodes pull a tier's due lane before its other
lanes, so within a priority the jobs with the earliest deadlines start first, and a job held
after others were released waits behind at most the ones still in the due lane.

A release publishes the held message's body to the due lane with its own message id
(`<tenant>.<job_id>.due`) and then deletes the held message. A leader that dies in between
leaves both; the next leader publishes again, which the stream drops as a duplicate within its
duplicate window (so failover must take less than that window), and deletes the held one. A
cancel that deleted the held message during its release finds the due copy too: the releaser
deletes its copy if no node was handed it yet.

Held jobs wait for a leader: with no control plane running none is released (plain submits
still run). docs/deadlines.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from common.jsdelete import delete_stored
from control.db.store import as_utc
from control.nodes import FleetNode
from schemas.codec import DecodeError
from schemas.registry import JOB_DECODER
from schemas.subjects import HeldJob, Subjects, parse_held

log = logging.getLogger("flotilla.deadlines")
#: Held messages read per scan at most; the rest at the next tick.
SCAN_BATCH = 2000
#: Every held message is read again this often, so a cancelled one is forgotten.
RESCAN_S = 30.0
#: A held submit is often heard before the stream has stored it: a kicked tick that found no
#: new held job looks again this soon, this many times, rather than a whole interval later.
KICK_RETRY_S, KICK_RETRIES = 0.01, 3
Group = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Held:
    seq: int
    job: HeldJob
    #: Epoch seconds; infinite when the body names none or does not decode (released last: the
    #: node that takes it fails it, visibly).
    deadline: float
    data: bytes
    headers: dict[str, str]

    @property
    def group(self) -> Group:
        return self.job.pool, self.job.priority


def held_of(msg: RawStreamMsg) -> Held | None:
    """A held message as the releaser keeps it; None for a subject not of the held form."""
    try:
        job = parse_held(msg.subject or "")
    except ValueError:
        return None
    try:
        due = as_utc(JOB_DECODER.decode(msg.data or b"").deadline)
    except DecodeError:
        due = None
    deadline = math.inf if due is None else due.timestamp()
    return Held(msg.seq or 0, job, deadline, msg.data or b"", dict(msg.headers or {}))


def release_order(held: Iterable[Held]) -> list[Held]:
    """Earliest deadline first; equal deadlines in submit (stream) order."""
    return sorted(held, key=lambda h: (h.deadline, h.seq))


def to_release(backlog: int, free: int, margin: int) -> int:
    """How many more jobs a tier's due lanes should get: enough for every free slot of the pool
    plus `margin` (a slot that frees before the next tick finds a job), less what waits there."""
    return max(0, max(free, 0) + margin - backlog)


def free_slots(nodes: Iterable[FleetNode], pool: str, priority: str) -> int:
    """Free job slots of `pool` over its online nodes that pull `priority` now, as their last
    heartbeats said (a node of a release before open_tiers pulls every tier)."""
    free = 0
    for node in nodes:
        beat = node.heartbeat
        if node.state != "online" or pool not in node.capabilities.pools:
            continue
        tiers = beat.open_tiers.get(pool)
        if tiers is None or priority in tiers:
            free += beat.free_slots.get(pool, 0)
    return free


def due_headers(held: Held) -> dict[str, str]:
    """The held message's own headers (a trace context), less the server's, with the release's
    message id: the job's, so a daemon accepts it as the job's own (job_msg_id_fits)."""
    kept = {k: v for k, v in held.headers.items() if not k.lower().startswith("nats-")}
    kept["Nats-Msg-Id"] = f"{held.job.tenant}.{held.job.job_id}.due"
    return kept


@dataclass(slots=True)
class ReleaseStats:
    released: int = 0
    #: Releases whose held message was gone (a cancel meanwhile) and whose copy was withdrawn.
    withdrawn: int = 0


class Releaser:
    def __init__(
        self,
        js: JetStreamContext,
        nc: NATS | None,
        subjects: Subjects,
        free_slots: Callable[[str, str], int],
        *,
        margin: int = 1,
        interval: float = 0.2,
        on_release: Callable[[str], None] = lambda pool: None,
    ) -> None:
        self.js, self.nc, self.subjects = js, nc, subjects
        self.free_slots, self.margin, self.interval = free_slots, margin, interval
        self.on_release = on_release
        self.stats = ReleaseStats()
        self._held: dict[int, Held] = {}
        self._next = 1
        self._scanned_at = -math.inf
        #: The last scan read up to the newest held job: only then is a release EDF.
        self.caught_up = False
        #: Held jobs the last tick's scan read.
        self._found = 0
        self._kick = asyncio.Event()

    @property
    def held(self) -> list[Held]:
        return release_order(self._held.values())

    async def run(self, stop: asyncio.Event) -> None:
        sub = None
        if self.nc is not None:  # each held submit wakes the loop (the tick is the fallback)
            sub = await self.nc.subscribe(self.subjects.timed_wildcard, cb=self._on_held)
        try:
            retries = 0
            while not stop.is_set():
                kicked = self._kick.is_set()
                self._kick.clear()
                self._found = 0
                try:
                    await self.tick()
                except NatsError as exc:  # the broker's: the next tick tries again
                    log.warning("deadline release failed (%s)", exc)
                wait = self.interval
                if kicked and not self._found and retries < KICK_RETRIES:
                    retries, wait = retries + 1, KICK_RETRY_S
                else:
                    retries = 0
                waits = [asyncio.ensure_future(e.wait()) for e in (self._kick, stop)]
                try:
                    await asyncio.wait(waits, timeout=wait, return_when="FIRST_COMPLETED")
                finally:
                    for w in waits:
                        w.cancel()
        finally:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            self._held.clear()  # a later term reads them all again
            self._next, self._scanned_at, self.caught_up = 1, -math.inf, False

    async def _on_held(self, msg: Msg) -> None:
        self._kick.set()

    async def tick(self) -> int:
        """Read new held jobs, then release into every tier whose due lanes run short."""
        self._found = await self.scan()
        if not self.caught_up:  # order among a part of the held jobs would not be EDF
            self._kick.set()  # read on at once
            return 0
        released = 0
        groups = sorted({h.group for h in self._held.values()})
        for group in groups:
            released += await self._release_group(group)
        return released

    async def scan(self) -> int:
        """Read held messages not seen yet (all of them again every RESCAN_S)."""
        now = asyncio.get_running_loop().time()
        if now - self._scanned_at > RESCAN_S:
            self._held, self._next, self._scanned_at = {}, 1, now
            self.caught_up = False
        found = 0
        while found < SCAN_BATCH:
            try:
                msg = await self.js.get_msg(
                    self.subjects.jobs_stream, seq=self._next,
                    subject=self.subjects.timed_wildcard, next=True,
                )  # fmt: skip
            except NotFoundError:  # none after _next: every held job is known
                self.caught_up = True
                break
            seq = msg.seq or self._next
            self._next = seq + 1
            held = held_of(msg)
            if held is not None:
                self._held[seq] = held
                found += 1
        else:
            self.caught_up = False  # stopped at the batch: more may follow
        return found

    async def _release_group(self, group: Group) -> int:
        pool, prio = group
        lanes = [ln for ln in self.subjects.lanes(pool, prio) if ln.due]
        backlog = 0
        for lane in lanes:
            try:
                info = await self.js.consumer_info(self.subjects.jobs_stream, lane.consumer)
            except NotFoundError:  # the topology has not made it yet: nothing to release into
                return 0
            backlog += info.num_pending or 0
        n = to_release(backlog, self.free_slots(pool, prio), self.margin)
        tenants = {ln.tenant for ln in lanes}
        released = 0
        for held in release_order(h for h in self._held.values() if h.group == group):
            if released >= n:
                break
            if None not in tenants and held.job.tenant not in tenants:
                continue  # its share was removed: no lane would pull it; it stays held
            if await self.release(held):
                released += 1
        return released

    async def release(self, held: Held) -> bool:
        """Move one held job to its due lane; False when it was gone already (cancelled)."""
        job = held.job
        subject = self.subjects.due_stored(job.tenant, job.pool, job.priority, job.job_id)
        ack = await self.js.publish(
            subject, held.data, headers=due_headers(held), stream=self.subjects.jobs_stream
        )
        self._held.pop(held.seq, None)
        if not await delete_stored(self.js, self.subjects.jobs_stream, held.seq):
            if not ack.duplicate:  # a cancel took it meanwhile: withdraw the copy if we can
                await self._withdraw(ack.seq, held)
            return False
        self.stats.released += 1
        self.on_release(job.pool)
        return True

    async def _withdraw(self, seq: int, held: Held) -> None:
        lane = self.subjects.lane(held.job.pool, held.job.priority, held.job.tenant, due=True)
        if lane is None:
            return
        info = await self.js.consumer_info(self.subjects.jobs_stream, lane.consumer)
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        if seq > (delivered or 0) and await delete_stored(self.js, self.subjects.jobs_stream, seq):
            self.stats.withdrawn += 1
