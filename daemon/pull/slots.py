"""Per-pool slot accounting: reserve before a fetch, hand unused slots back, release in `finally`.

A puller reserves every free slot of its pool, fetches at most that many messages, and releases
the ones it did not fill. Each job then holds one slot while its operation runs. So a node never
runs more operations than slots, and a full node fetches nothing (it waits in `wait_free`).

A job whose operation has ended still reports its outcome and settles its message (the terminal
event journalled with a full sync and PubAck'd, then the ack confirmed: round trips, no work).
It hands its slot over for that (`hand_over_slot`), so the next job starts meanwhile, as long as
fewer than SETTLING_PER_SLOT x capacity jobs of the pool are settling; otherwise it keeps the slot
to its end. So a node holds at most three times its slots in messages, and a broker that stops
answering stops it fetching as before. The puller marks each job's task with its slot (`HOLD`, a
context variable the task inherits at creation), so the job's final `release` knows whether its
slot went already.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from dataclasses import dataclass

#: Jobs of a pool that may settle without their slot, per slot.
SETTLING_PER_SLOT = 2


class SlotError(RuntimeError):
    """Slots released that were never reserved: a bug, never silenced."""


class Slots:
    def __init__(self, capacity: dict[str, int]) -> None:
        self._capacity = dict(capacity)
        self._used = dict.fromkeys(capacity, 0)
        #: Jobs past their operation that handed their slot over, by pool.
        self._settling = dict.fromkeys(capacity, 0)
        self._changed = asyncio.Event()

    @property
    def pools(self) -> list[str]:
        return list(self._capacity)

    def capacity(self, pool: str) -> int:
        return self._capacity.get(pool, 0)

    def used(self, pool: str) -> int:
        return self._used.get(pool, 0)

    def free(self, pool: str) -> int:
        return max(0, self.capacity(pool) - self.used(pool))

    def free_all(self) -> dict[str, int]:
        return {p: self.free(p) for p in self._capacity}

    def reserve(self, pool: str, wanted: int | None = None) -> int:
        """Take up to `wanted` (default: all) free slots now; returns how many were taken."""
        free = self.free(pool)
        take = free if wanted is None else min(free, max(0, wanted))
        self._used[pool] = self.used(pool) + take
        return take

    def take(self, pool: str, count: int) -> None:
        """Slots for messages already delivered, over capacity if need be (a full pool then
        fetches nothing until enough of them end)."""
        self._used[pool] = self.used(pool) + max(0, count)

    def settling(self, pool: str) -> int:
        return self._settling.get(pool, 0)

    def hand_over(self, pool: str) -> bool:
        """A slot held by a job whose operation ended becomes free, unless the pool has its
        bound of settling jobs already; True if it did (the job then owes `release` nothing)."""
        if self.settling(pool) >= SETTLING_PER_SLOT * self.capacity(pool) or self.used(pool) == 0:
            return False
        self._used[pool] -= 1
        self._settling[pool] = self.settling(pool) + 1
        self._notify()
        return True

    def release(self, pool: str, count: int = 1) -> None:
        """Give back `count` slots; called by a job's task at its end, it ends the job's
        settling instead if its slot was handed over already (see `HOLD`)."""
        hold = HOLD.get()
        if hold is not None and hold.slots is self and hold.pool == pool and count == 1:
            HOLD.set(None)  # once per job
            hold.end()
            if hold.handed_over:
                self._settling[pool] -= 1
                return
        if count < 0 or count > self.used(pool):
            raise SlotError(f"release of {count} slot(s) in {pool!r}; {self.used(pool)} held")
        if count:
            self._used[pool] -= count
            self._notify()

    def resize(self, capacity: dict[str, int]) -> None:
        """Reload: new pools appear, capacity shrinks lazily (running jobs keep their slots)."""
        for pool in capacity:
            self._used.setdefault(pool, 0)
        self._capacity = dict(capacity)
        self._notify()

    async def wait_free(self, pool: str, within: float) -> bool:
        """Wait (bounded) until `pool` has a free slot; True if it has one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.free(pool) == 0:
            changed, left = self._changed, deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)
        return True

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next change.
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass
class Hold:
    """The slot one job's task holds (set by the puller as it spawns the task)."""

    slots: Slots
    pool: str
    handed_over: bool = False
    #: Called once when the job stops holding its slot (handed over or released): a fair-share
    #: pool's book counts the slot time then (daemon.pull.shares).
    on_end: Callable[[], None] | None = None

    def end(self) -> None:
        on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()


#: The slot of the job whose task reads it: a task copies the context it was created in.
HOLD: contextvars.ContextVar[Hold | None] = contextvars.ContextVar("slot_hold", default=None)


def hand_over_slot() -> bool:
    """Called by a job whose operation ended: free its slot for the next job now, if the pool
    has room for one more settling job (see the module's docstring); True if it did."""
    hold = HOLD.get()
    if hold is None or hold.handed_over:
        return False
    hold.handed_over = hold.slots.hand_over(hold.pool)
    if hold.handed_over:
        hold.end()
    return hold.handed_over
