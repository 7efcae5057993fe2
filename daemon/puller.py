"""One pool's pull loop: reserve free slots, sweep priorities high -> normal -> low, spawn jobs.

Priority design: JetStream has no per-message priority, so each (pool, priority) pair has its own
durable consumer (`jobs-<pool>-<priority>`). Every sweep asks `high` first, then `normal`, then
`low`, each for at most the free slots left; a message that arrives is handed to its job task and
the sweep restarts at `high`. The higher tiers use a short long-poll (`tier_timeout`), skipped
when a consumer-info peek shows the tier empty (else every job would wait it out); the last tier
the normal `fetch_timeout`. So whenever jobs of several priorities are waiting, the highest is
fetched first; a job of a higher tier that arrives while the node idles on `low` waits at most
`fetch_timeout`. A full pool fetches nothing: it waits on the slot counter instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from control.topology import TopologySettings, ensure_pool_consumers
from daemon.slots import Slots
from schemas.common import PRIORITIES
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.puller")
Spawn = Callable[[Msg, str, str], None]


class PoolPuller:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        topology: TopologySettings,
        pool: str,
        slots: Slots,
        spawn: Spawn,
        *,
        fetch_timeout: float,
        tier_timeout: float = 0.2,
    ) -> None:
        self.js, self.subjects, self.topology = js, subjects, topology
        self.pool, self.slots, self.spawn = pool, slots, spawn
        self.fetch_timeout, self.tier_timeout = fetch_timeout, tier_timeout
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        self.stopping = asyncio.Event()
        self.fetched = 0

    async def _bind(self) -> None:
        if self._subs:
            return
        try:
            subs = await self._bind_all()
        except NotFoundError:
            # The consumer was never created (or was deleted): create it, same config as init.
            await ensure_pool_consumers(self.js, self.subjects, self.topology, [self.pool])
            subs = await self._bind_all()
        self._subs = subs

    async def _bind_all(self) -> dict[str, JetStreamContext.PullSubscription]:
        subs: dict[str, JetStreamContext.PullSubscription] = {}
        for prio in PRIORITIES:
            durable = self.subjects.consumer(self.pool, prio)
            await self.js.consumer_info(self.subjects.jobs_stream, durable)
            subs[prio] = await self.js.pull_subscribe_bind(
                durable, stream=self.subjects.jobs_stream
            )
        return subs

    async def _unbind(self) -> None:
        subs, self._subs = self._subs, {}
        for sub in subs.values():
            try:
                await sub.unsubscribe()
            except Exception as exc:  # a dead connection: nothing to clean up
                log.debug("unsubscribe: %s", exc)

    async def run(self) -> None:
        """Until `stopping` is set; errors back off and rebind, so reconnects are survived."""
        delay = 0.5
        try:
            while not self.stopping.is_set():
                if not await self.slots.wait_free(self.pool, 1.0):
                    continue
                try:
                    await self._bind()
                    await self._sweep()
                    delay = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("pull %s failed (%s); retrying in %.1fs", self.pool, exc, delay)
                    await self._unbind()
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10.0)
        finally:
            await self._unbind()

    async def _sweep(self) -> None:
        last = len(PRIORITIES) - 1
        for i, prio in enumerate(PRIORITIES):
            if self.stopping.is_set():
                return
            if i < last and not await self._may_hold_jobs(prio):
                continue
            k = self.slots.reserve(self.pool)
            if k == 0:
                return
            msgs: list[Msg] = []
            try:
                timeout = self.fetch_timeout if i == last else self.tier_timeout
                msgs = await self._subs[prio].fetch(k, timeout=timeout)
            except TimeoutError:
                msgs = []
            finally:
                # Slots not filled go back; each message keeps one until its job's `finally`.
                self.slots.release(self.pool, k - len(msgs))
            for msg in msgs:
                self.fetched += 1
                self.spawn(msg, self.pool, prio)
            if msgs:
                return

    async def _may_hold_jobs(self, prio: str) -> bool:
        """A peek (one consumer-info request, about a millisecond) that spares an empty higher
        tier its `tier_timeout` long-poll, which every job would otherwise wait out. Delivered
        but unacked messages count as "maybe": a nak'd job waiting for redelivery is one."""
        durable = self.subjects.consumer(self.pool, prio)
        info = await self.js.consumer_info(self.subjects.jobs_stream, durable)
        return bool(info.num_pending or info.num_ack_pending)


class PullerSet:
    """One puller task per served pool; `sync` follows reloads, `stop` ends them gracefully."""

    def __init__(self, make: Callable[[str], PoolPuller], fetch_timeout: float) -> None:
        self._make, self._fetch_timeout = make, fetch_timeout
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
                self._running[pool] = (
                    puller,
                    asyncio.create_task(puller.run(), name=f"pull-{pool}"),
                )

    @property
    def pools(self) -> list[str]:
        """The pools being pulled now."""
        return sorted(self._running)

    async def stop(self) -> None:
        await self._stop(list(self._running))

    async def _stop(self, pools: list[str]) -> None:
        stopping = [self._running.pop(p) for p in pools]
        for puller, _ in stopping:
            puller.stopping.set()
        # A fetch in flight returns within fetch_timeout; cancelling it only risks a message
        # pulled for nobody, which JetStream redelivers after ack_wait, so wait first.
        tasks = [t for _, t in stopping]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._fetch_timeout + 1)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
