"""What only the leader instance runs: alerts, canaries, retention, media and stray sweeps,
workflows, the release of deadline jobs.

Each term starts from what Postgres knows (alerts left firing by the previous leader are adopted,
so they resolve) and ends by forgetting its in-memory state, so a later term starts clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from common.supervise import Supervisor
from control.alerts.canary import CanaryRunner
from control.alerts.rules import AlertEngine
from control.api.jobquery import firing_alerts
from control.config import ControlConfig
from control.leader import Term
from control.objsweep import OrphanSweep, run_sweeper
from control.retention import Policy, run_pruner

#: Firing alerts a new leader adopts, at most (each is one rule on one subject).
FIRING_LIMIT = 100_000


class Singletons:
    def __init__(
        self,
        cfg: ControlConfig,
        db: asyncpg.Pool,
        engine: AlertEngine,
        canary: CanaryRunner,
        supervisor: Supervisor,
        sweep: OrphanSweep,
        strays: Callable[[asyncio.Event], Coroutine[Any, Any, None]],
        workflows: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
        releaser: Callable[[asyncio.Event], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self.db, self.engine, self.canary = db, engine, canary
        engine.follow()  # until the lease says this instance leads

        def pruner(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            policy, every = Policy.of(cfg), cfg.prune_interval
            run = lambda: run_pruner(db, policy, every, stop)  # noqa: E731
            return supervisor.supervise("retention", run, stop)

        def canaries(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            return supervisor.supervise("canary", lambda: canary.run(stop), stop)

        def sweeper(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            sweep.reset()  # a new term waits a full grace before it purges anything
            run = lambda: run_sweeper(sweep, cfg.prune_interval, stop)  # noqa: E731
            return supervisor.supervise("media-sweep", run, stop)

        def stray_sweeper(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            return supervisor.supervise("stray-sweep", lambda: strays(stop), stop)

        def advancer(stop: asyncio.Event) -> Coroutine[Any, Any, None]:
            assert workflows is not None
            return supervisor.supervise("workflows", lambda: workflows(stop), stop)

        runs: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]] = {
            "canary": canaries,
            "retention": pruner,
            "media-sweep": sweeper,
            "stray-sweep": stray_sweeper,
        }
        if workflows is not None:
            runs["workflows"] = advancer
        if releaser is not None:
            release = releaser
            runs["deadline-release"] = lambda stop: supervisor.supervise(
                "deadline-release", lambda: release(stop), stop
            )
        self.term = Term(runs)

    async def on_change(self, leading: bool) -> None:
        if leading:
            self.engine.lead(await firing_alerts(self.db, limit=FIRING_LIMIT))
            self.term.begin()
        else:
            await self.term.end()
            self.engine.follow()
            self.canary.reset()
