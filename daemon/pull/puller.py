"""One pool's pull loop: woken by submits, sweep priorities high -> normal -> low, spawn jobs.

Priority design: JetStream has no per-message priority, so each (pool, priority) pair has its own
durable consumer (`jobs-<pool>-<priority>`). Every sweep asks `high` first, then `normal`, then
`low`, each for at most the free slots left; a message that arrives is handed to its job task and
the sweep restarts at `high`. A tier is fetched (a short `tier_timeout` long-poll) only when a
consumer-info peek says it may hold jobs, so whenever jobs of several priorities wait, the
highest is fetched first, and at most one pull request per pool is in flight. A lane whose jobs
are all out (delivered to some node, unacked) can give only a redelivery, which the server
hands over at once when due: it gets a REDELIVERY_POLL_S poll, not the long-poll, so a tier with
jobs running somewhere does not hold up the starts of the tiers below it. A tier has two
lanes: its due lane (`due-<pool>-<priority>`: deadline jobs the control plane's leader released
earliest deadline first, control/deadlines/release.py) is fetched before the submitted jobs'
lane; a fair-share pool has that pair per tenant.

Latency design: no pull is held open while idle (a long-poll on one tier would make a job of
another tier wait it out). A core subscription on the pool's submit subjects
(`<prefix>.submit.*.<pool>.>`, which every submitted job passes, whatever its tenant), shared
in one queue group by the pool's nodes with a free slot (daemon.pull.wake), and one on its due
lanes' subjects (`<prefix>.due.<pool>.>`) for releases, wakes one node's
loop for a new sweep within milliseconds; the body is never read, the job itself still comes
through the durable consumer. The submit can arrive before the stream has stored the job (often,
measured), so the tier named in the woken subject is fetched even if its peek still shows it empty:
the long-poll returns as soon as the job is stored. A sweep that fetched nothing waits for the next
wake or at most `fetch_timeout`, the fallback poll that finds redeliveries (nak, ack timeout),
which send no submit, and keeps a node whose wake subscription is refused working, only slower. A
fallback poll asks again only the lanes that may hold a job: a lane its last peek found empty
(nothing waiting, nothing out) can get one only by a submit or a release, which wake a node of
the pool, so such a lane is peeked on every EMPTY_POLLS-th poll (`_empty`), and on every one where
the node hears no hints (its wake subscription refused or left). A job can still reach a lane
without waking a node that takes it (the hint went to a node whose tier is closed, or that filled
up): each node's recheck finds it, within EMPTY_POLLS polls at worst, and far sooner on a fleet,
whose nodes poll at different moments. A lane with a job out (delivered, unacked) is peeked at
every poll, for its redelivery; a job delivered since the last peek is seen out at the next
recheck, which comes well within its ack wait (EMPTY_POLLS is cut down to fit half of it). So an
idle node of a quiet pool asks about its six lanes once per EMPTY_POLLS polls, not at every one.
A
job that arrives while a tier's short long-poll is in flight waits at most `tier_timeout`; one
delivered just after the client's wait ended (a busy event loop) is taken from the
subscription's queue at once, not at the next poll (`queued_jobs`). An idle
node starts a woken job in milliseconds (bench/bench_daemon.py: p50 about 6 ms, was 2.7 s). A full
pool fetches nothing: it waits on the slot counter instead.

Processing windows (daemon.pull.windows): a sweep asks only the tiers whose class is open at
`now()` (an injected clock); a closed tier is neither peeked nor fetched, so its jobs stay in the
stream, untouched (nothing is nak'd; running jobs finish). An idle wait is bounded by the time to
the next opening of a closed tier, so the puller never sleeps past one. A node with every tier of
the pool closed leaves the wake group, so submit hints go to the others; but a hint may still
wake a node whose tier of that job is closed (the hint's tier is known only once heard) while
another node has it open: that one then finds the job at its fallback poll (at most
`fetch_timeout`), not at once.

Aging (`aging_every` = N, 0 disables): strict sweeps starve lower tiers while higher work keeps
arriving. The puller counts consecutive job starts from a tier while a lower open tier had jobs
waiting (seen by a submit hint or a consumer peek after a start; once seen, taken to wait on,
so a busy node peeks once per count, not per start). Once the count reaches N, the next sweep
first looks again and starts one job of the open lower tier whose next job is the oldest in the
stream, then goes back to strict order; if nothing waits below any more, the count just ends.
A start from the waiting tier itself (or one below it) ends the count too. So on one node a
waiting lower-tier job sees at most N higher-tier starts of that pool before one job of its tier
starts (the bound is per node and pool: with M nodes serving the pool the fleet may start up to
M x N higher jobs meanwhile). Each aged start is counted (`aged`; the daemon's
`flotilla_aged_starts_total`). The cost: while nothing is seen waiting below, a fetch of a
higher tier is followed by a peek of each lower open tier without a hint (one consumer-info
request each, after the jobs are spawned, so no start waits for it), but not within
AGING_PEEK_S of one that found that tier empty; `aging_every = 0` spares it. So a lower job
this node did not hear of is seen at the first start at least AGING_PEEK_S after the last
empty peek, and its N starts count from there.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from common.supervise import RESTART, Policy, Supervisor
from daemon.pull.shares import ShareBook
from daemon.pull.slots import HOLD, Hold, Slots
from daemon.pull.wake import Wake
from daemon.pull.windows import Windows
from schemas.common import PRIORITIES
from schemas.subjects import SHARES_METADATA, Lane, Subjects, decode_shares

log = logging.getLogger("flotilla.puller")
Spawn = Callable[[Msg, str, str], None]
Clock = Callable[[], datetime]
#: Woken this long after a window's opening instant: a timer firing a hair early would find
#: the tier still closed (it then waits again, briefly).
OPENING_SLACK_S = 0.05
#: A fair-share pool's weights are read again this often (a change of tenants is noticed at
#: once: a deleted lane answers "not found", a hint names a tenant with no lane).
SHARES_REFRESH_S = 60.0
STALE_REBIND_S = 5.0
#: How long a lane whose jobs are all out (delivered, unacked) is polled: it can give only a
#: redelivery, handed over at once when due; a tier_timeout long-poll there held up every
#: start of the lanes after it while any job of it ran anywhere.
REDELIVERY_POLL_S = 0.02
#: A pool with no deadline job seen for this long is taken to have none: aging's peek after
#: each start asks a lower tier's due lane once per DUE_RECHECK_S, not every time.
DUE_QUIET_S = 60.0
DUE_RECHECK_S = 5.0
#: Aging's peek of a lower tier that had no hint is skipped for this long after one found it
#: empty: a burst of short jobs peeked two tiers per start, some 15 % of its rate, while a
#: job that waits there unheard is seen this much later at most, which real encodes never feel.
AGING_PEEK_S = 0.1
#: A hinted tier's fetch peeks its due lane (deadline jobs go first) at most this often while
#: no release was heard and no due job seen for DUE_QUIET_S: a release wakes a node, which
#: then peeks at once, so a node that did not hear it takes its job at most this much later.
DUE_ORDER_RECHECK_S = 0.5
#: How often a node without its due lanes (an older control plane or credentials) looks again.
DUE_RETRY_S = 300.0
#: A lane last seen empty is peeked again on every EMPTY_POLLS-th fallback poll (fewer where half
#: the lane's ack wait is shorter): 6 fallback polls of 5 s, 30 s.
EMPTY_POLLS = 6
#: An idle wait looks again this soon for a job delivered after its fetch stopped waiting.
LATE_CHECK_S = 0.5
Bound = list[tuple[Lane, JetStreamContext.PullSubscription]]
_NO_WINDOWS = Windows()


def utc_now() -> datetime:
    return datetime.now(UTC)


def queued_jobs(sub: JetStreamContext.PullSubscription) -> int:
    """Jobs waiting in a pull subscription's queue. Not `pending_msgs`: the status a pull gets
    when it expires (408) usually lands there too, just after the client's wait ended, and the
    next fetch discards it; counted, it would make an idle node sweep without pause. Reads
    nats-py's queue (no public way to tell them apart): a release that moves it gives 0, and
    late jobs wait for the fallback poll again, as they did before."""
    queue = getattr(getattr(sub, "_sub", None), "_pending_queue", None)
    items = getattr(queue, "_queue", None)
    if items is None:
        return 0
    return sum(1 for msg in list(items) if not JetStreamContext.is_status_msg(msg))


class MissingConsumer(Exception):
    """A pool's durable consumers do not exist (yet)."""


class PoolPuller:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        pool: str,
        slots: Slots,
        spawn: Spawn,
        *,
        fetch_timeout: float,
        tier_timeout: float = 0.2,
        wake_source: Client | None = None,
        pause_after: float = 0.05,
        windows: Callable[[], Windows] = lambda: _NO_WINDOWS,
        now: Clock = utc_now,
        aging_every: int = 0,
        on_aged: Callable[[], None] = lambda: None,
        on_share_start: Callable[[str], None] = lambda tenant: None,
    ) -> None:
        self.js, self.subjects = js, subjects
        self.pool, self.slots, self.spawn = pool, slots, spawn
        self.fetch_timeout, self.tier_timeout = fetch_timeout, tier_timeout
        #: How long a full pool stays in the wake group, waiting for a slot, before leaving it.
        self.pause_after = pause_after
        #: Per tier, its lanes: one consumer, or one per tenant in a fair-share pool.
        self._subs: dict[str, Bound] = {}
        self._bound_at = 0.0
        #: Set when a hint names a tenant the pool's lanes do not: bind again (shares changed).
        self._stale = False
        #: The last bind found no due lane to pull (an older control plane: docs/operations.md).
        self._no_due = False
        #: Loop time a peek last saw a due lane holding jobs (-inf: never).
        self._due_at = -math.inf
        #: Per tier, loop time its due lane was last peeked.
        self._due_checked: dict[str, float] = {}
        #: Per lower tier, loop time aging's peek last found nothing waiting there.
        self._aging_empty_at: dict[str, float] = {}
        #: A fair-share pool's slot use per tenant on this node (empty weights: not fair).
        self.book = ShareBook()
        #: Per tier, the lanes (consumers) the last peek saw holding jobs.
        self._maybe: dict[str, set[str]] = {}
        #: Per tier, the lanes the last peek saw with jobs not yet delivered.
        self._waiting: dict[str, set[str]] = {}
        #: Per lane a peek last found empty (consumer name): fallback polls until it is peeked
        #: again. Dropped when a peek sees a job in it, a hint names it or a fetch takes one.
        self._empty: dict[str, int] = {}
        #: The idle wait before this sweep ended by the fallback poll running out (no hint, no
        #: opening, no slot freed): it may leave out lanes known empty.
        self._poll_sweep = False
        self._quiet = False
        self.wake = Wake(wake_source, subjects.pool_submits(pool), subjects.due_captured(pool))
        self.stopping = asyncio.Event()
        #: Set while the loop waits for a wake (or the fallback poll) after an empty sweep.
        self.idle = asyncio.Event()
        self.fetched = 0
        #: Idle waits ended by a submit wake-up, and by the fallback poll running out.
        self.woken = 0
        self.polled = 0
        #: The rules in force (read at every sweep: a runtime change applies at once), the clock.
        self.windows, self.now = windows, now
        #: Idle waits ended by a window opening.
        self.opened = 0
        #: Jobs found in a lane's queue after its fetch had timed out (see `_delivered_unread`).
        self.late = 0
        self.aging_every, self.on_aged = aging_every, on_aged
        self.on_share_start = on_share_start
        #: Consecutive starts from a tier while a lower open tier had jobs waiting (see Aging).
        self.starved = 0
        #: The lower tier seen waiting while `starved` counts.
        self._below: str | None = None
        #: Aged starts: lower-tier jobs started ahead of higher ones.
        self.aged = 0

    def recheck(self) -> None:
        """The rules changed: end an idle wait, so the next sweep reads them."""
        self.wake.event.set()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.event.set()  # ends an idle wait at once

    async def _bind(self) -> None:
        if self._subs:
            return
        try:
            self._subs = await self._bind_all()
        except NotFoundError:
            # Creating consumers is the control plane's job (and a node's credentials forbid
            # it): say what is missing, then the run loop retries with back-off.
            raise MissingConsumer(
                f"pool {self.pool!r} has no job consumers; create them with `flotilla nats init` "
                "or by adding the pool to the control plane's topology.pools"
            ) from None

    @property
    def fair(self) -> bool:
        return bool(self.book.weights)

    async def _bind_all(self) -> dict[str, Bound]:
        stream = self.subjects.jobs_stream
        try:
            shares = decode_shares(await self._shares_metadata())
        except ValueError as exc:
            raise MissingConsumer(f"the jobs stream's shares are unreadable: {exc}") from None
        weights = shares.get(self.pool, {})
        if weights != self.book.weights:
            self.book.reweigh(weights)
        subjects = replace(self.subjects, shares=shares)
        subs: dict[str, Bound] = {}
        no_due = False
        for prio in PRIORITIES:
            subs[prio] = []
            for lane in subjects.lanes(self.pool, prio):
                if lane.due and (no_due or not await self._due_lane_ready(lane)):
                    no_due = True
                    continue
                await self.js.consumer_info(stream, lane.consumer)
                sub = await self.js.pull_subscribe_bind(lane.consumer, stream=stream)
                subs[prio].append((lane, sub))
        self._bound_at, self._stale, self._no_due = asyncio.get_running_loop().time(), False, no_due
        return subs

    async def _due_lane_ready(self, lane: Lane) -> bool:
        """Whether a due lane can be pulled. A control plane of the release before makes none,
        and credentials of that release may not ask for it (the request goes unanswered): the
        pool's other lanes are pulled meanwhile, and binding is tried again every
        DUE_RETRY_S."""
        try:
            await self.js.consumer_info(self.subjects.jobs_stream, lane.consumer)
        except (NotFoundError, NatsTimeoutError) as exc:
            log.warning(
                "pool %s: due lane %s unavailable (%s); deadline jobs released there are left "
                "to other nodes", self.pool, lane.consumer, type(exc).__name__,
            )  # fmt: skip
            return False
        return True

    async def _shares_metadata(self) -> str | None:
        """The fair-share weights, from the jobs stream's metadata. Credentials of the release
        before lack the right to read it (the request times out, unanswered): then every pool
        is pulled as a plain one, which in a fair-share pool fails to bind, visibly (and is tried
        again, with the rest of the binding)."""
        try:
            info = await self.js.stream_info(self.subjects.jobs_stream)
        except NatsTimeoutError:
            log.warning(
                "cannot read the jobs stream's info (no answer: a permissions violation?); "
                "pool %s is pulled without fair shares", self.pool,
            )  # fmt: skip
            return None
        return (info.config.metadata or {}).get(SHARES_METADATA)

    def _rebind_due(self) -> bool:
        if not self._subs:
            return False
        age = asyncio.get_running_loop().time() - self._bound_at
        # Not at once for a stale hint: a tenant with no share may publish (the stream refuses
        # its job, but the hint is heard), and must not make every sweep bind again.
        if self._stale and age > STALE_REBIND_S:
            return True
        if self._no_due and age > DUE_RETRY_S:
            return True
        return self.fair and age > SHARES_REFRESH_S

    async def _unbind(self) -> None:
        subs, self._subs = self._subs, {}
        for _, sub in (bound for tier in subs.values() for bound in tier):
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a dead connection: nothing to clean up
                log.debug("unsubscribe: %s", exc)

    async def run(self) -> None:
        """Until `stopping` is set; broker errors back off and rebind, so reconnects are survived.
        Anything else is a bug, for the supervisor (PullerSet) to log and restart after."""
        delay = 0.5
        await self.wake.resume()
        try:
            while not self.stopping.is_set():
                # A busy node's slot usually frees within milliseconds (a job hands it over as
                # its operation ends): it leaves the wake group only when full for longer, not
                # for every job (each leave and rejoin is a SUB, an UNSUB and a task).
                full = self.slots.free(self.pool) == 0
                if full and not await self.slots.wait_free(self.pool, self.pause_after):
                    await self.wake.pause()  # a hint to a full node would wake nobody useful
                    if not await self.slots.wait_free(self.pool, 1.0):
                        continue
                # Cleared before the rules are read: a change (`recheck`) from here on ends the
                # idle wait below, and one before it is read now.
                self.wake.event.clear()
                if not self.open_tiers():  # every tier closed: hints are for other nodes
                    await self.wake.pause()
                    await self._idle()  # until the first opening, a rules change or a poll
                    continue
                await self.wake.resume()
                try:
                    if self._rebind_due():
                        await self._unbind()
                    await self._bind()
                    again = await self._sweep()
                    delay = 0.5
                except (NatsError, MissingConsumer, OSError) as exc:
                    log.warning("pull %s failed (%s); retrying in %.1fs", self.pool, exc, delay)
                    await self._unbind()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                if not again:
                    await self._idle()
        finally:
            await self.wake.stop()
            await self._unbind()

    async def _idle(self) -> None:
        if self.stopping.is_set():  # the sweep cleared the event `stop` had set
            return
        self.idle.set()
        timeout, opening = self.fetch_timeout, False
        until = self._until_opening()
        if until is not None and until < timeout:
            timeout, opening = until, True
        try:
            # A job the server delivered after a fetch had stopped waiting for it is taken now,
            # not at the fallback poll: looked for again a moment into the wait.
            if self._delivered_unread():
                self.late += 1
                return
            first = min(timeout, LATE_CHECK_S)
            try:
                await asyncio.wait_for(self.wake.event.wait(), first)
            except TimeoutError:
                if self._delivered_unread():
                    self.late += 1
                    return
                if timeout <= first:
                    raise
                await asyncio.wait_for(self.wake.event.wait(), timeout - first)
            self.woken += 1
        except TimeoutError:
            if opening:
                self.opened += 1
            else:
                self.polled += 1
                self._poll_sweep = True
        finally:
            self.idle.clear()

    def _delivered_unread(self) -> bool:
        """Jobs in a lane's subscription queue: delivered by the server for a pull whose
        client-side wait had ended (the event loop was busy), so no fetch returned them."""
        return any(queued_jobs(sub) for tier in self._subs.values() for _, sub in tier)

    def _until_opening(self) -> float | None:
        """Seconds until the first closed tier of this pool opens (None: none is closed)."""
        windows, now = self.windows(), self.now()
        if not windows:
            return None
        closed = [p for p in PRIORITIES if not windows.is_open(self.pool, p, now)]
        opening = windows.next_opening(self.pool, closed, now)
        if opening is None:
            return None
        return max(0.0, (opening - now).total_seconds()) + OPENING_SLACK_S

    def open_tiers(self) -> list[str]:
        """The priorities this pool pulls now, high first."""
        return self.windows().open_tiers(self.pool, self.now())

    async def _sweep(self) -> bool:
        """One pass high -> low; True when it fetched jobs or ran out of slots (go on at once)."""
        # Cleared first: a submit during the sweep sets it again, so it is never missed.
        self.wake.event.clear()
        self._quiet = self._poll_sweep and not any(self.wake.hints.values())
        self._poll_sweep = False
        tiers = self.open_tiers()
        if self.aging_every and self.starved >= self.aging_every:
            aged = await self._aged_start(tiers[1:])
            if aged is not None:
                return aged
        for i, prio in enumerate(tiers):
            if self.stopping.is_set():
                return False
            hinted = self.wake.hints[prio]
            # A fair-share pool peeks each lane in `_fetch`, to order them.
            peeked = not hinted and not self.fair
            if peeked and not await self._may_hold_jobs(prio):
                continue
            k = self.slots.reserve(self.pool)
            if k == 0:
                return True
            msgs = await self._fetch(prio, k, hinted, peeked=peeked)
            if msgs:
                await self._count_starts(prio, len(msgs), tiers[i + 1 :])
                return True
        return False

    async def _fetch(self, prio: str, k: int, hinted: int, *, peeked: bool = False) -> list[Msg]:
        """Fetch up to `k` (reserved) jobs of one tier and spawn them: from its due lane first
        (deadline jobs the leader released), then its submitted jobs' lane. In a fair-share
        pool one job, from the lane the book puts first of those that may hold jobs, so that
        every start reads the shares again. `peeked`: the sweep has just peeked every lane."""
        msgs: list[Msg] = []
        lane: Lane | None = None
        for consumer in self._heard_lanes(prio):  # a job is on its way there
            self._empty.pop(consumer, None)
        try:
            lanes = self._subs[prio]
            if self.fair:
                self.slots.release(self.pool, k - 1)
                k = 1
                heard = self.wake.heard[prio]
                self._stale = any(t not in {ln.tenant for ln, _ in lanes} for t in heard)
            if len(lanes) > 1:
                # A hinted job may not be stored yet: its lane is fetched even if it peeked
                # empty; the others only if a peek says they may hold jobs.
                heard_lanes = self._heard_lanes(prio)
                if not peeked:
                    skip = heard_lanes
                    if self._skip_due(prio, DUE_ORDER_RECHECK_S):
                        skip = skip | {ln.consumer for ln, _ in lanes if ln.due}
                    await self._may_hold_jobs(prio, skip=skip)
                maybe = self._maybe[prio] | heard_lanes
                lanes = [b for b in lanes if b[0].consumer in maybe]
                if self.fair:
                    lanes = self.book.order(lanes, lambda b: b[0].tenant or "")
            # A lane with jobs waiting (or a hinted one) goes before one whose jobs are all out
            # (running, or nak'd for a redelivery), and only it gets the long-poll: the other
            # can hold only a redelivery, which the server hands over at once if it is due.
            ready = self._waiting.get(prio, set()) | self._heard_lanes(prio)
            lanes = sorted(lanes, key=lambda b: b[0].consumer not in ready)
            for candidate, sub in lanes:
                wait = self.tier_timeout if candidate.consumer in ready else REDELIVERY_POLL_S
                msgs = await self._fetch_lane(sub, k, min(wait, self.tier_timeout))
                if msgs:
                    lane = candidate
                    self._empty.pop(candidate.consumer, None)
                    break
        finally:
            # Slots not filled go back; each message keeps one until its job's `finally`.
            # nats-py's fetch also returns what an earlier pull left in the subscription's
            # queue, so it may hand over more than `k`: those are run too (JetStream gave
            # them to this node), on slots taken over capacity until they end.
            if len(msgs) > k:
                self.slots.take(self.pool, len(msgs) - k)
            self.slots.release(self.pool, max(0, k - len(msgs)))
        # An empty long-poll saw every job stored before it ended: its hints are spent.
        self.wake.consume(prio, len(msgs) if msgs else hinted)
        for msg in msgs:
            self.fetched += 1
            # The job's task inherits its slot (daemon.pull.slots.HOLD) as it is created.
            token = HOLD.set(Hold(self.slots, self.pool, on_end=self._share_start(lane)))
            try:
                self.spawn(msg, self.pool, prio)
            finally:
                HOLD.reset(token)
        return msgs

    async def _fetch_lane(
        self, sub: JetStreamContext.PullSubscription, k: int, wait: float
    ) -> list[Msg]:
        try:
            return await sub.fetch(k, timeout=wait)
        except TimeoutError:
            if not queued_jobs(sub):
                return []
        # The server delivered after the client stopped waiting (a busy event loop): the
        # message sits in the subscription's queue, and a fetch returns it at once.
        self.late += 1
        try:
            return await sub.fetch(k, timeout=self.tier_timeout)
        except TimeoutError:
            return []

    def _share_start(self, lane: Lane | None) -> Callable[[], None] | None:
        """A fair-share start: charged to its tenant now, trued up when its slot ends."""
        if lane is None or lane.tenant is None or not self.fair:
            return None
        start = self.book.started(lane.tenant)
        self.on_share_start(lane.tenant)
        return lambda: self.book.ended(start)

    async def _count_starts(self, prio: str, started: int, lower: list[str]) -> None:
        """Aging's count: starts from a tier while a lower open tier has jobs waiting. Once one
        was seen waiting, it is taken to wait on (no peek per start) until the aged sweep looks
        or a start from that tier (or below) ends the count."""
        if not self.aging_every:
            return
        rank = PRIORITIES.index
        if self.starved and self._below is not None and rank(prio) < rank(self._below):
            self.starved += started
            return
        self.starved, self._below = 0, None
        now = asyncio.get_running_loop().time()
        for low in lower:
            if self.wake.hints[low]:
                self.starved, self._below = started, low
                return
            if now - self._aging_empty_at.get(low, -math.inf) < AGING_PEEK_S:
                continue
            if await self._pending(low):
                self.starved, self._below = started, low
                return
            self._aging_empty_at[low] = now

    async def _aged_start(self, lower: list[str]) -> bool | None:
        """Start one job of the open lower tier whose next job is the oldest; None when none
        waits (the sweep goes on in strict order), else what the sweep returns."""
        waiting = [(seq, prio) for prio in lower if (seq := await self._oldest(prio)) is not None]
        if not waiting:
            self.starved, self._below = 0, None
            return None
        _, prio = min(waiting)
        k = self.slots.reserve(self.pool, 1)
        if k == 0:
            return True  # the count stands: the next sweep with a free slot ages
        self.starved, self._below = 0, None
        msgs = await self._fetch(prio, k, self.wake.hints[prio])
        if not msgs:  # taken by another node meanwhile
            return None
        self.aged += len(msgs)
        for _ in msgs:
            self.on_aged()
        log.debug("aged start of a %s job in %s", prio, self.pool)
        return True

    async def _pending(self, prio: str) -> int:
        """Jobs of the tier not delivered yet (one consumer-info request per lane; the due
        lane's only as often as `_skip_due` says: this is aging's count, not the order)."""
        pending = 0
        skip_due = self._skip_due(prio)
        for lane, _ in self._subs[prio]:
            if lane.due and skip_due:
                continue
            info = await self.js.consumer_info(self.subjects.jobs_stream, lane.consumer)
            pending += info.num_pending or 0
            if lane.due:
                self._due_checked[prio] = asyncio.get_running_loop().time()
                if info.num_pending or info.num_ack_pending:
                    self._due_at = self._due_checked[prio]
        return pending

    async def _oldest(self, prio: str) -> int | None:
        """The stream sequence of the tier's oldest undelivered job (its age: one stream holds
        every tier), or None when it has none waiting."""
        oldest = [seq for lane, _ in self._subs[prio] if (seq := await self._lane_oldest(lane))]
        return min(oldest) if oldest else None

    async def _lane_oldest(self, lane: Lane) -> int | None:
        info = await self.js.consumer_info(self.subjects.jobs_stream, lane.consumer)
        if not info.num_pending:
            return None
        after = (info.delivered.stream_seq if info.delivered else None) or 0
        try:
            msg = await self.js.get_msg(
                self.subjects.jobs_stream, seq=after + 1, next=True, subject=lane.filter
            )
        except NotFoundError:  # taken meanwhile: as old as the consumer's position says
            return after + 1
        return msg.seq or after + 1

    def _skip_due(self, prio: str, recheck: float = DUE_RECHECK_S) -> bool:
        """Whether a peek of the tier may leave out its due lane: no release heard and no due
        job seen for DUE_QUIET_S, and the lane was peeked less than `recheck` ago. Aging's
        peek follows every start, so a pool without deadline work pays one due peek per lower
        tier per DUE_RECHECK_S there, not two per start (each about a millisecond: some 15 %
        of a burst's rate); a lower tier with only released jobs waiting starts its count at
        most DUE_RECHECK_S late. A hinted fetch asks with DUE_ORDER_RECHECK_S; an unhinted
        sweep's peeks always ask every lane."""
        now = asyncio.get_running_loop().time()
        if now - max(self._due_at, self.wake.due_at) <= DUE_QUIET_S:
            return False
        return now - self._due_checked.get(prio, -math.inf) < recheck

    def _heard_lanes(self, prio: str) -> set[str]:
        """The tier's lanes a hint named: a submit names its tenant's submitted-jobs lane, a
        release its tenant's due lane (a pool without shares: the tier's)."""
        heard = set()
        for lane, _ in self._subs[prio]:
            tenants = (self.wake.heard_due if lane.due else self.wake.heard)[prio]
            if tenants and (lane.tenant is None or lane.tenant in tenants):
                heard.add(lane.consumer)
        return heard

    async def _may_hold_jobs(self, prio: str, skip: set[str] | None = None) -> bool:
        """A peek (one consumer-info request per lane, about a millisecond each) that spares an
        empty lane its `tier_timeout` long-poll, which every job would otherwise wait out.
        Delivered but unacked messages count as "maybe": a nak'd job waiting for redelivery is
        one. Keeps which lanes may hold jobs, for `_fetch`; lanes in `skip` are not asked."""
        maybe: set[str] = set()
        waiting: set[str] = set()
        for lane, _ in self._subs[prio]:
            if skip and lane.consumer in skip:
                continue
            if self._known_empty(lane):
                continue
            info = await self.js.consumer_info(self.subjects.jobs_stream, lane.consumer)
            if lane.due:
                self._due_checked[prio] = asyncio.get_running_loop().time()
            if info.num_pending:
                waiting.add(lane.consumer)
            if info.num_pending or info.num_ack_pending:
                maybe.add(lane.consumer)
                self._empty.pop(lane.consumer, None)
                if lane.due:
                    self._due_at = asyncio.get_running_loop().time()
            else:
                self._empty[lane.consumer] = self._empty_polls(info.config.ack_wait)
        self._maybe[prio], self._waiting[prio] = maybe, waiting
        return bool(maybe)

    def _known_empty(self, lane: Lane) -> bool:
        """Whether a fallback poll's peek may leave `lane` out: found empty by a recent peek,
        and a job arriving there since would have sent this node's pool a hint it hears (see
        the module's docstring). Counts the poll off against the lane's recheck."""
        left = self._empty.get(lane.consumer)
        if not self._quiet or left is None or left <= 1:
            return False
        if self.wake.paused or (lane.due and not self.wake.hears_due):
            return False  # polling is how this node learns of that lane's jobs
        self._empty[lane.consumer] = left - 1
        return True

    def _empty_polls(self, ack_wait: float | None) -> int:
        """Fallback polls between peeks of an empty lane: EMPTY_POLLS, or fewer where they
        would span more than half the lane's ack wait (a job taken meanwhile by a node that
        dies is then seen out before it is due again)."""
        if not ack_wait:
            return EMPTY_POLLS
        return max(1, min(EMPTY_POLLS, int(ack_wait / (2 * self.fetch_timeout))))


class PullerSet:
    """One puller task per served pool; `sync` follows reloads, `stop` ends them gracefully.

    Each runs under `supervisor` with `policy`: a puller holds no job (what it fetched has been
    spawned, and JetStream redelivers a message nobody acks), so a restart loses nothing."""

    def __init__(
        self,
        make: Callable[[str], PoolPuller],
        fetch_timeout: float,
        supervisor: Supervisor | None = None,
        policy: Policy = RESTART,
    ) -> None:
        self._make, self._fetch_timeout = make, fetch_timeout
        self._supervisor, self._policy = supervisor or Supervisor(), policy
        self._running: dict[str, tuple[PoolPuller, asyncio.Task[None]]] = {}
        #: Set by the first `sync`: whoever reacts to a change before start-up leaves it alone.
        self.started = False

    async def sync(self, pools: dict[str, int]) -> None:
        """Start pullers for pools with slots; stop those for pools no longer served."""
        self.started = True
        gone = [p for p in self._running if pools.get(p, 0) == 0]
        await self._stop(gone)
        for pool, capacity in pools.items():
            if capacity > 0 and pool not in self._running:
                puller = self._make(pool)
                name = f"pull-{pool}"
                run = self._supervisor.supervise(name, puller.run, puller.stopping, self._policy)
                self._running[pool] = (puller, asyncio.create_task(run, name=name))

    @property
    def pools(self) -> list[str]:
        """The pools being pulled now."""
        return sorted(self._running)

    def puller(self, pool: str) -> PoolPuller | None:
        """The running puller of `pool`, if any (tests wait on its `idle`)."""
        entry = self._running.get(pool)
        return entry[0] if entry else None

    async def stop(self) -> None:
        await self._stop(list(self._running))

    async def _stop(self, pools: list[str]) -> None:
        stopping = [self._running.pop(p) for p in pools]
        for puller, _ in stopping:
            puller.stop()
        # A fetch in flight returns within tier_timeout; cancelling it only risks a message
        # pulled for nobody, which JetStream redelivers after ack_wait, so wait first.
        tasks = [t for _, t in stopping]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._fetch_timeout + 1)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
