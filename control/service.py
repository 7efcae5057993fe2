"""The control-plane service: every component as a named, supervised task, stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
from nats.aio.client import Client as NATS

from control.alerts import AlertEngine, Snapshot, nats_sink
from control.alertstore import db_sink, fan_out
from control.api import ApiService, ApiSettings
from control.canary import CanaryRunner
from control.config import ControlConfig, load_control_config
from control.db import create_pool
from control.db.migrate import migrate
from control.deadletter import DeadLetters
from control.httpserve import HttpServer
from control.ingest import Ingestor
from control.metrics import Metrics
from control.nodes import NodeTracker
from control.retention import run_pruner
from control.snapshot import finished_since, nats_snapshot, with_db
from control.topology import ensure_topology
from control.watcher import Watcher
from control.webhooks import WebhookSender
from daemon.natsconn import connect
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.control")
MAX_BACKOFF = 30.0


async def supervise(name: str, run: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run `run` until stop; a crash is logged and restarted with back-off, never fatal."""
    delay = 0.5
    while not stop.is_set():
        try:
            await run()
            delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s crashed; restarting in %.1fs", name, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, MAX_BACKOFF)


class ControlPlane:
    """One control-plane instance; tests start and stop it in-process."""

    def __init__(self, cfg: ControlConfig) -> None:
        self.cfg = cfg
        self.subjects = Subjects(cfg.nats.prefix, cfg.nats.partitions)
        self.stop_event = asyncio.Event()
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.metrics = Metrics()
        self.nc: NATS | None = None
        self.db: asyncpg.Pool | None = None
        self.api: ApiService | None = None
        self.http: HttpServer | None = None
        self.metrics_port = 0
        self._ingest: Ingestor | None = None

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
        ingest = Ingestor(
            js, db, subjects, batch=cfg.ingest_batch, fetch_timeout=cfg.ingest_fetch_timeout,
            on_batch=lambda n, lag: self.metrics.ingest_batch.observe(n),
        )  # fmt: skip
        nodes = NodeTracker(js, db, subjects, offline_after=th.node_offline_after)
        trackers.append(nodes)
        dead_letters = DeadLetters(js, db, subjects)
        self.api = ApiService(
            nc, subjects, ApiSettings(pools=pools, offline_after=th.node_offline_after,
                                      require_api_keys=cfg.require_api_keys), db,
        )  # fmt: skip
        await self.api.start()
        canary = CanaryRunner(
            js, db, subjects, pools, th.node_offline_after, cfg.canary_timeout, cfg.canary_interval
        )

        mark = datetime.now(UTC)
        seen_events = 0

        async def source() -> Snapshot:
            nonlocal mark, seen_events
            snap = await nats_snapshot(
                js, subjects, pools, th.node_offline_after, canary.failed_pools()
            )
            self.metrics.ingest_lag.set(ingest.stats.lag_seconds)
            self.metrics.ingest_events.inc(max(0, ingest.stats.events_ingested - seen_events))
            seen_events = ingest.stats.events_ingested
            self.metrics.nats_connected.set(1.0 if nc.is_connected else 0.0)
            try:
                snap = await with_db(snap, db, th.failure_rate_window)
                done, mark = await finished_since(db, mark)
                self.metrics.observe_finished(done)
                self.metrics.postgres_up.set(1.0)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                self.metrics.postgres_up.set(0.0)
            return snap

        engine = AlertEngine(th, fan_out(nats_sink(nc, subjects), db_sink(db)))
        watcher = Watcher(source, engine, self.metrics, cfg.alert_interval)
        self.http = self.metrics.server(cfg.metrics_host, cfg.metrics_port, lambda: nc.is_connected)
        self.metrics_port = await self.http.start()
        stop = self.stop_event
        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "ingest": ingest.run,
            "nodes": nodes.run,
            "watcher": lambda: watcher.run(stop),
            "webhooks": lambda: WebhookSender(db).run(stop),
            "canary": lambda: canary.run(stop),
            "dead-letters": dead_letters.run,
            "retention": lambda: run_pruner(
                db, cfg.event_retention_days, cfg.prune_batch, cfg.prune_interval, stop
            ),
        }
        self._ingest = ingest
        for name, run in runs.items():
            self.tasks[name] = asyncio.create_task(supervise(name, run, stop), name=name)

    async def stop(self) -> None:
        self.stop_event.set()
        if self._ingest is not None:
            self._ingest.stop()
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        if self.api is not None:
            await self.api.stop()
        if self.http is not None:
            await self.http.stop()
        if self.nc is not None:
            await self.nc.close()
        if self.db is not None:
            await self.db.close()


async def serve(config_path: Path | None) -> int:
    cfg = load_control_config(config_path)
    plane = ControlPlane(cfg)
    await plane.start()
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    log.info("control plane up; metrics on %s:%d", cfg.metrics_host, plane.metrics_port)
    try:
        await done.wait()
    finally:
        await plane.stop()
    return 0
