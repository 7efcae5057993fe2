"""The control-plane service: every component as a named, supervised task, stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from nats.aio.client import Client as NATS

from common.httpserve import HttpServer
from common.looplag import watch_loop_lag
from common.natsconn import connect
from common.sdnotify import Notifier, watchdog_task
from common.supervise import Supervisor
from control.alerts.canary import CanaryRunner
from control.alerts.rules import AlertEngine, Snapshot, nats_sink
from control.alerts.snapshot import finished_since, fleet_snapshot, with_db, with_deadlines
from control.alerts.store import db_sink, fan_out
from control.alerts.watcher import Watcher
from control.api.service import ApiService, ApiSettings
from control.api.submitrefusal import SubmitRefusal
from control.api.updates import publish_updates
from control.config import ControlConfig, load_control_config
from control.db import create_pool
from control.db.migrate import migrate
from control.deadletters.advisories import DeadLetters
from control.deadletters.strays import run_stray_sweep
from control.deadlines.release import Releaser, free_slots
from control.ingest import Ingestor
from control.jobend import JobEndResponder
from control.leader import LeaderLease
from control.metrics import Metrics, Readiness
from control.nodes import NodeTracker
from control.objsweep import OrphanSweep
from control.reload import apply as apply_config
from control.reload import on_sighup
from control.singletons import Singletons
from control.topology import ensure_topology
from control.webhooks import WebhookSender
from control.workflows.advance import Advancer
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.control")
#: Crashes in a row after which ingest counts as unhealthy (about 15 s of back-off).
INGEST_CRASH_LIMIT = 5
#: Seconds start() waits for the node tracker's first full read before serving the API anyway
#: (its fleet calls answer 503 until then).
NODES_SYNC_WAIT = 10.0


class ControlPlane:
    """One control-plane instance; tests start and stop it in-process."""

    def __init__(self, cfg: ControlConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        #: Epoch seconds now, as deadlines are judged (tests move it instead of waiting).
        self.clock = clock
        subjects = Subjects(cfg.nats.prefix, cfg.nats.partitions)
        self.subjects = cfg.topology.subjects(subjects)
        self.stop_event = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.metrics = Metrics()
        self.nc: NATS | None = None
        self.db: asyncpg.Pool | None = None
        self.api: ApiService | None = None
        self.refusal: SubmitRefusal | None = None
        self.job_end: JobEndResponder | None = None
        self.nodes: NodeTracker | None = None
        self.http: HttpServer | None = None
        self.metrics_port = 0
        self._ingest: Ingestor | None = None
        self._dead_letters: DeadLetters | None = None
        self.supervisor = Supervisor()
        self.lease: LeaderLease | None = None
        self.singletons: Singletons | None = None
        self._live: tuple[AlertEngine, Watcher, CanaryRunner] | None = None
        self.workflows: Advancer | None = None
        self.releaser: Releaser | None = None

    async def start(self) -> None:
        cfg, subjects = self.cfg, self.subjects
        await migrate(cfg.database_url)
        db = self.db = await create_pool(cfg.database_url)
        trackers: list[NodeTracker] = []

        async def resync() -> None:
            # KV watchers go blind for a while after a server restart: reconcile from the bucket.
            for tracker in trackers:
                tracker.resync()

        nc = self.nc = await connect(cfg.nats, name="flotilla-control", on_reconnected=resync)
        js = nc.jetstream()
        await ensure_topology(js, subjects, cfg.topology)
        pools = list(cfg.topology.pools)
        th = cfg.alerts
        ready = Readiness(
            self.metrics, lambda: nc.is_connected, max(3 * cfg.alert_interval, 30.0),
            th.ingest_lag_seconds,
        )  # fmt: skip

        def on_batch(size: int, lag: float) -> None:
            self.metrics.ingest_batch.observe(size)
            ready.ingest_batch(lag)

        ingest = Ingestor(
            js, db, subjects, batch=cfg.ingest_batch, fetch_timeout=cfg.ingest_fetch_timeout,
            on_batch=on_batch,
            on_rejected=lambda r: self.metrics.rejected_events.labels(r.reason).inc(),
            on_fresh=lambda items: publish_updates(nc, subjects, items),
        )  # fmt: skip
        # This instance's view of the fleet: what the API, alerts and canaries read.
        nodes = self.nodes = NodeTracker(
            js, subjects, offline_after=th.node_offline_after, forget_after=th.node_forget_after
        )
        trackers.append(nodes)
        stop = self.stop_event
        self.tasks["nodes"] = asyncio.create_task(
            self.supervisor.supervise("nodes", nodes.run, stop), name="nodes"
        )
        if not await nodes.wait_synced(NODES_SYNC_WAIT):
            log.warning("node bucket not read within %gs; serving anyway", NODES_SYNC_WAIT)
        dead_letters = DeadLetters(js, db, subjects)
        self.api = ApiService(
            nc, subjects, ApiSettings(pools=pools, require_api_keys=cfg.require_api_keys,
                                    deadline_policy=cfg.deadline_policy), nodes,
            db, clock=self.clock,
            observe=lambda verb, s: self.metrics.api_request.labels(verb).observe(s),
        )  # fmt: skip
        await self.api.start()
        # Producers still on the version 1 submit subject get an error, not silence.
        self.refusal = SubmitRefusal(nc, subjects)
        await self.refusal.start()
        # Nodes ask before running a redelivered job whose first node may have ended it.
        self.job_end = JobEndResponder(nc, db, subjects)
        await self.job_end.start()
        canary = CanaryRunner(
            js, db, subjects, pools, nodes, cfg.canary_timeout, cfg.canary_interval
        )

        mark = datetime.now(UTC)
        seen_events = 0

        async def source() -> Snapshot:
            nonlocal mark, seen_events
            snap = await fleet_snapshot(js, subjects, pools, nodes, canary.failed_pools())
            self.metrics.ingest_events.inc(max(0, ingest.stats.events_ingested - seen_events))
            seen_events = ingest.stats.events_ingested
            self.metrics.nats_connected.set(1.0 if nc.is_connected else 0.0)
            try:
                snap = await with_db(
                    snap, db, th.failure_rate_window, self.cfg.alerts.rejected_events_window
                )
                done, mark = await finished_since(db, mark)
                if engine.active:  # the leader's alone, like the fleet gauges
                    snap = await with_deadlines(snap, db, now=self.clock())
                    self.metrics.observe_finished(done)
                self.metrics.postgres_up.set(1.0)
                ready.postgres_ok = True
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self.metrics.postgres_up.set(0.0)
                ready.postgres_ok = False
            return snap

        engine = AlertEngine(th, fan_out(nats_sink(nc, subjects), db_sink(db)))
        watcher = Watcher(source, engine, self.metrics, cfg.alert_interval)
        self._live = (engine, watcher, canary)
        self.http = self.metrics.server(cfg.metrics_host, cfg.metrics_port, ready.problems)
        self.metrics_port = await self.http.start()
        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "ingest": ingest.run,
            "watcher": lambda: watcher.run(stop),
            "webhooks": lambda: WebhookSender(db, cfg.webhooks).run(stop),
            # A shared durable hands each advisory to one instance: safe on all of them.
            "dead-letters": dead_letters.run,
            "loop-lag": lambda: watch_loop_lag(
                self.metrics.loop_lag.observe,
                stop,
                gc_observe=lambda gen, s: self.metrics.gc_pause.labels(str(gen)).observe(s),
            ),
        }
        # Only the lease holder runs these, or two instances would act twice.
        sweep = OrphanSweep(nc, subjects.objects_bucket, cfg.media_orphan_grace)
        every = cfg.stray_sweep_interval
        submits = self.api.limits
        m = self.metrics

        def observe(kind: str, outcome: str) -> None:
            (m.workflow_steps if kind == "step" else m.workflows_ended).labels(outcome).inc()

        advancer = self.workflows = Advancer(
            nc, db, subjects, cfg.workflow_sweep_interval, submits, observe
        )
        releaser = self.releaser = Releaser(
            js, nc, subjects, lambda pool, prio: free_slots(nodes.iter_nodes(), pool, prio),
            margin=cfg.deadline_release_margin,
            on_release=lambda pool: m.deadline_released.labels(pool).inc(),
        )  # fmt: skip
        singletons = self.singletons = Singletons(
            cfg, db, engine, canary, self.supervisor, sweep,
            lambda stop: run_stray_sweep(js, db, subjects, every, stop),
            lambda stop: advancer.run(stop), releaser.run,
        )  # fmt: skip
        instance = cfg.instance_id or f"{socket.gethostname()}-{os.getpid()}"
        lease = self.lease = LeaderLease(
            js, f"{subjects.prefix}_leader", instance, cfg.leader_lease_ttl,
            replicas=cfg.topology.replicas,
        )  # fmt: skip

        async def on_change(leading: bool) -> None:
            await singletons.on_change(leading)
            self.metrics.lead(leading)

        runs["leader"] = lambda: lease.run(stop, on_change)
        self._ingest, self._dead_letters = ingest, dead_letters
        for name, run in runs.items():
            supervised = self.supervisor.supervise(name, run, stop)
            self.tasks[name] = asyncio.create_task(supervised, name=name)

    def healthy(self) -> bool:
        """For the systemd watchdog: ingest is running, not crash-looping, and NATS not closed
        for good (a broker outage is not unhealthy: reconnecting is all a restart would do)."""
        task = self.tasks.get("ingest")
        alive = task is not None and not task.done()
        closed = self.nc is None or self.nc.is_closed
        return alive and not closed and self.supervisor.crashes["ingest"] < INGEST_CRASH_LIMIT

    def reload(self, new: ControlConfig) -> list[str]:
        """Apply thresholds and intervals live; return the changed keys that need a restart."""
        old, self.cfg = self.cfg, new
        return [] if self._live is None else apply_config(self._live, old, new)

    async def stop(self) -> None:
        self.stop_event.set()
        # Both loops end once asked: the dead-letter loop within one fetch timeout, ingest once
        # its open pull request has run out and what it fetched ahead is handed back (about one
        # more). Cancellation (which nats-py's fetch can swallow on Python 3.11) is the backstop.
        for part in (self._ingest, self._dead_letters):
            if part is not None:
                part.stop()
        leader = self.tasks.pop("leader", None)
        if leader is not None:
            # Let it end the term and delete the lease, so a follower takes over at once.
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(leader, 10)
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        # Each part closes even when another fails (e.g. a connection that is already gone).
        closers: list[tuple[str, Callable[[], Awaitable[object]]]] = []
        if self.api is not None:
            closers.append(("api", self.api.stop))
        if self.refusal is not None:
            closers.append(("submit refusal", self.refusal.stop))
        if self.job_end is not None:
            closers.append(("job end answers", self.job_end.stop))
        if self.http is not None:
            closers.append(("http", self.http.stop))
        if self.nc is not None:
            closers.append(("nats", self.nc.close))
        if self.db is not None:
            closers.append(("postgres", self.db.close))
        for what, close in closers:
            try:
                await close()
            except Exception as exc:
                log.warning("closing %s failed: %s", what, exc)


async def serve(config_path: Path | None) -> int:
    cfg = load_control_config(config_path)
    notifier = Notifier.from_environ()
    plane = ControlPlane(cfg)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    # SIGHUP's default action would kill us; until we serve there is nothing to reload.
    loop.add_signal_handler(signal.SIGHUP, lambda: log.info("SIGHUP while starting: ignored"))
    pinger: asyncio.Task[None] | None = None
    try:
        # Migrations, NATS, topology, API and ingest are all up when start() returns.
        await plane.start()
        notifier.ready(f"metrics on {cfg.metrics_host}:{plane.metrics_port}")
        pinger = asyncio.create_task(watchdog_task(notifier, plane.healthy), name="watchdog")
        on_sighup(plane.reload, config_path, notifier, lambda: plane.nc)
        log.info("control plane up; metrics on %s:%d", cfg.metrics_host, plane.metrics_port)
        await done.wait()
    finally:
        notifier.stopping()
        if pinger is not None:
            pinger.cancel()
        await plane.stop()
        notifier.close()
    return 0
