"""Per-pool slot accounting: reserve before a fetch, hand unused slots back, release in `finally`.

A puller reserves every free slot of its pool, fetches at most that many messages, and releases
the ones it did not fill. Each job then holds one slot until its `finally`. So a node never holds
more jobs than slots, and a full node fetches nothing (it waits in `wait_free`).
"""

from __future__ import annotations

import asyncio


class SlotError(RuntimeError):
    """Slots released that were never reserved: a bug, never silenced."""


class Slots:
    def __init__(self, capacity: dict[str, int]) -> None:
        self._capacity = dict(capacity)
        self._used = dict.fromkeys(capacity, 0)
        self._changed = asyncio.Condition()

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

    def release(self, pool: str, count: int = 1) -> None:
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
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.free(pool) > 0), within)
            except TimeoutError:
                return False
        return True

    def _notify(self) -> None:
        async def _wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        task = loop.create_task(_wake())
        _pending.add(task)
        task.add_done_callback(_pending.discard)


_pending: set[asyncio.Task[None]] = set()
