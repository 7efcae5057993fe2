"""Per-tenant token buckets for the API's submit rate (in memory, per control-plane instance)."""

from __future__ import annotations

import time
from dataclasses import dataclass

MAX_TENANTS = 100_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class TenantLimiter:
    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self._buckets: dict[str, _Bucket] = {}

    def allow(
        self, tenant: str, now: float | None = None, rate: float | None = None,
        burst: int | None = None,
    ) -> bool:  # fmt: skip
        """Take one token; `rate`/`burst` override the defaults for this tenant."""
        now = time.monotonic() if now is None else now
        rate = self.rate if rate is None else rate
        cap = float(self.burst if burst is None else burst)
        b = self._buckets.get(tenant)
        if b is None:
            if len(self._buckets) >= MAX_TENANTS:  # bound memory: forget the oldest tenant
                self._buckets.pop(next(iter(self._buckets)))
            b = self._buckets[tenant] = _Bucket(cap, now)
        b.tokens = min(cap, b.tokens + (now - b.at) * rate)
        b.at = now
        if b.tokens < 1.0:
            return False
        b.tokens -= 1.0
        return True
