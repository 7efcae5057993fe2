"""Fleet state: mirror the node KV bucket into `nodes` and decide online, draining or offline.

Each daemon puts its NodeRecord (capabilities + latest heartbeat) under its node id; the bucket's
TTL and limit markers turn a silent node into a PURGE marker, a clean exit into a DEL. A KV
watcher goes blind for a while after a server restart and may skip intermediate values, so the
watcher is re-created periodically and on reconnect (`resync()`), and every re-creation first
reads the whole bucket (its initial snapshot) and marks nodes missing from it as expired. A
separate sweep recomputes each node's state from its last sighting, so a node whose heartbeats
stop goes offline after `offline_after` seconds even when no marker ever arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from control.db import queries
from control.fold import at
from schemas.codec import DecodeError
from schemas.registry import NODE_RECORD_DECODER
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.nodes")

_MARKERS = ("DEL", "PURGE")


@dataclass(slots=True)
class NodeStats:
    records: int = 0
    expiries: int = 0
    resyncs: int = 0
    bad_records: int = 0
    state_changes: int = 0


class NodeTracker:
    def __init__(
        self,
        js: JetStreamContext,
        db: asyncpg.Pool,
        subjects: Subjects,
        *,
        offline_after: float = 30.0,
        resync_interval: float = 60.0,
        sweep_interval: float | None = None,
    ) -> None:
        self.js, self.db, self.subjects = js, db, subjects
        self.offline_after = offline_after
        self.resync_interval = resync_interval
        self.sweep_interval = sweep_interval or max(0.2, min(5.0, offline_after / 3))
        self.stats = NodeStats()
        self._resync = asyncio.Event()

    def resync(self) -> None:
        """Re-create the watcher and re-read the bucket (call it from the reconnected callback)."""
        self._resync.set()

    async def run(self) -> None:
        """Watch and sweep until cancelled; errors (NATS or Postgres away) restart the watch."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._sweep_loop(), name="nodes-sweep")
            tg.create_task(self._watch_loop(), name="nodes-watch")

    async def _watch_loop(self) -> None:
        delay = 0.5
        while True:
            try:
                await self.watch_once()
                delay = 0.5
            except Exception as exc:
                log.warning("node watch failed (%s); restarting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("node sweep failed: %s", exc)

    async def watch_once(self) -> None:
        """One watcher's life: the full snapshot, then live updates until the next resync."""
        kv = await self.js.key_value(self.subjects.nodes_bucket)
        self._resync.clear()
        # nats-py's KeyWatcher is untyped.
        watcher: Any = await kv.watchall()
        try:
            seen: list[str] = []
            while (entry := await watcher.updates(timeout=10.0)) is not None:
                seen.append(entry.key)
                await self.apply(entry)
            await self.db.execute(queries.NODES_MISSING, seen)
            await self.sweep()
            self.stats.resyncs += 1
            until = time.monotonic() + self.resync_interval
            while not self._resync.is_set() and time.monotonic() < until:
                try:
                    entry = await watcher.updates(timeout=self.sweep_interval)
                except TimeoutError:  # = asyncio.TimeoutError (nats-py raises both kinds)
                    continue
                if entry is not None:
                    await self.apply(entry)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def apply(self, entry: KeyValue.Entry) -> None:
        """One KV entry (a put or a DEL/PURGE marker) into the node's row, then its state."""
        node_id = entry.key
        seen_at = entry.created or datetime.now(UTC)
        if entry.operation in _MARKERS:
            self.stats.expiries += 1
            await self.db.execute(queries.NODE_EXPIRED, node_id, seen_at)
        else:
            try:
                record = NODE_RECORD_DECODER.decode(entry.value or b"")
            except DecodeError as exc:
                self.stats.bad_records += 1
                log.warning("node %s: unreadable KV record: %s", node_id, exc)
                return
            caps, hb = record.capabilities, record.heartbeat
            await self.db.execute(
                queries.NODE_RECORD,
                node_id,
                msgspec.json.encode(caps).decode(),
                at(hb.ts),
                caps.pools,
                msgspec.json.encode(hb).decode(),
                seen_at,
                hb.state,
            )
            self.stats.records += 1
        changed = await self.db.fetch(queries.SWEEP_NODE, self.offline_after, node_id)
        self._log_changes(changed)

    async def sweep(self) -> list[tuple[str, str]]:
        """Recompute every node's state; returns the (node id, new state) pairs that changed."""
        changed = await self.db.fetch(queries.SWEEP_NODES, self.offline_after)
        return self._log_changes(changed)

    def _log_changes(self, rows: list[asyncpg.Record]) -> list[tuple[str, str]]:
        pairs = [(r["node_id"], r["state"]) for r in rows]
        for node_id, state in pairs:
            log.info("node %s is %s", node_id, state)
        self.stats.state_changes += len(pairs)
        return pairs
