"""Fair shares on one node: which tenant of a fair-share pool the next free slot goes to.

Each tenant's use of the pool's slots on this node is counted in slot-seconds divided by its
weight (its *virtual use*). A job is charged its tenant's expected run time when it starts (the
mean of that tenant's recent runs here), and the difference to its real time when its slot ends,
so a burst of starts on an idle node already alternates by weight. The next start goes to the
waiting tenant with the least virtual use: a tenant over its share waits while another one under
its share has jobs waiting, and over time each tenant gets slot time in proportion to its weight
(per node; every node doing so gives the fleet the same proportions).

No banking (start-time fair queuing): the node keeps a virtual time, the use the last started
job's tenant had before its charge. A tenant that comes back after having had nothing waiting or
running is raised to that time, so the credit of its idle time is not kept: it starts at par with
the tenants being served and does not monopolise the node until it has caught up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

#: Run time charged at a start before a tenant has a finished run to learn from.
FIRST_ESTIMATE_S = 1.0
#: Weight of the newest run in a tenant's mean run time (an exponential mean).
LEARN = 0.2
#: A tenant the weights do not name (a lane added since they were read) counts with this.
DEFAULT_WEIGHT = 1.0

T = TypeVar("T")


@dataclass(slots=True)
class Start:
    """One running job's charge: what the book must true up when its slot ends."""

    tenant: str
    at: float
    charged_s: float
    ended: bool = False


class ShareBook:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.weights: dict[str, float] = {}
        #: Virtual use: slot-seconds (charged and trued up) over weight.
        self._use: dict[str, float] = {}
        self._running: dict[str, int] = {}
        self._mean_s: dict[str, float] = {}
        #: The use of the last started tenant before its charge (see the module's docstring).
        self.vtime = 0.0
        #: Tenants waiting at the last `order`, or running.
        self._active: set[str] = set()
        #: Starts per tenant, for the daemon's metrics.
        self.starts: dict[str, int] = {}

    def weight(self, tenant: str) -> float:
        return self.weights.get(tenant, DEFAULT_WEIGHT)

    def use(self, tenant: str) -> float:
        return self._use.get(tenant, 0.0)

    def running(self, tenant: str) -> int:
        return self._running.get(tenant, 0)

    def order(self, items: Iterable[T], tenant_of: Callable[[T], str]) -> list[T]:
        """`items` (the lanes with jobs waiting) least virtual use first; ties by tenant name,
        so it is stable."""
        items = list(items)
        waiting = {tenant_of(i) for i in items}
        for t in waiting - self._active:
            if self.running(t) == 0:
                self._use[t] = max(self.use(t), self.vtime)
        self._active = waiting | {t for t, n in self._running.items() if n > 0}
        # Rounded: thirds that add up to one must tie with a one, not lose by a last bit.
        return sorted(items, key=lambda i: (round(self.use(tenant_of(i)), 9), tenant_of(i)))

    def started(self, tenant: str) -> Start:
        self.vtime = self.use(tenant)
        self._active.add(tenant)
        charge = self._mean_s.get(tenant, FIRST_ESTIMATE_S)
        self._use[tenant] = self.use(tenant) + charge / self.weight(tenant)
        self._running[tenant] = self.running(tenant) + 1
        self.starts[tenant] = self.starts.get(tenant, 0) + 1
        return Start(tenant, self.clock(), charge)

    def ended(self, start: Start) -> None:
        """The job's slot ended (handed over or released): true up its charge; once per start."""
        if start.ended:
            return
        start.ended = True
        t = start.tenant
        took = max(0.0, self.clock() - start.at)
        self._use[t] = self.use(t) + (took - start.charged_s) / self.weight(t)
        self._running[t] = max(0, self.running(t) - 1)
        mean = self._mean_s.get(t)
        self._mean_s[t] = took if mean is None else mean + LEARN * (took - mean)

    def reweigh(self, weights: Mapping[str, float]) -> None:
        """New weights (the pool's shares changed): use is rescaled so no tenant jumps ahead."""
        for t, use in self._use.items():
            self._use[t] = use * self.weight(t) / weights.get(t, DEFAULT_WEIGHT)
        self.weights = dict(weights)
