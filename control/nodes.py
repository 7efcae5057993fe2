"""The fleet as this instance sees it: the node KV bucket kept in memory, and the one rule that
calls a node online, draining or offline (`node_state`).

Each daemon puts its NodeRecord (capabilities + latest heartbeat) under its node id; a clean
exit deletes it (a DEL marker) and the bucket's TTL turns a silent node into a PURGE marker. The
tracker keeps a node's last record after such a marker, so a node that went away stays listed,
offline, until it comes back or has been gone for `forget_after` seconds. The API, the alert
snapshot and the canaries read this view; every control-plane instance runs its own tracker.

A KV watcher goes blind for a while after a server restart and may skip intermediate values, so
it is re-created periodically, on reconnect (`resync()`) and when the bucket was made again.
The end of its initial snapshot is not trusted (nats-py may signal it before the values
arrive): the bucket's key list, read in one request once the watcher runs, says which
remembered nodes have no entry left.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from control.fleetread import bucket_born, node_keys
from schemas.codec import DecodeError
from schemas.nodes import Heartbeat, NodeCapabilities, NodeRecord, NodeState
from schemas.registry import NODE_RECORD_DECODER
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.nodes")

_MARKERS = ("DEL", "PURGE")
#: Longest wait for a watcher update, so a resync request is seen soon.
_POLL = 0.5
#: How often a watcher checks that its bucket is still the one it started on.
_BORN_CHECK = 5.0


def node_state(hb: Heartbeat, gone: bool, now: float, offline_after: float) -> NodeState:
    """The one rule: offline when the node's entry is gone, when it says so, or when its last
    heartbeat is older than `offline_after`; otherwise what it reports (online or draining)."""
    if gone or hb.state == "offline" or now - hb.ts > offline_after:
        return "offline"
    return hb.state


@dataclass(frozen=True, slots=True)
class FleetNode:
    """A node's last record as it sent it, and the state `node_state` gave it."""

    record: NodeRecord
    state: NodeState

    @property
    def node_id(self) -> str:
        return self.record.capabilities.node_id

    @property
    def capabilities(self) -> NodeCapabilities:
        return self.record.capabilities

    @property
    def heartbeat(self) -> Heartbeat:
        return self.record.heartbeat


class Fleet(Protocol):
    """What the API, the alert snapshot and the canaries read."""

    @property
    def synced(self) -> bool:
        """False until the whole bucket has been read once: the view may miss nodes."""
        ...

    def nodes(self, now: float | None = None) -> list[FleetNode]:
        """Every known node, by node id."""
        ...

    def iter_nodes(self, now: float | None = None) -> Iterator[FleetNode]:
        """Every known node, in no particular order, built as read."""
        ...

    def nodes_after(self, after: str | None, now: float | None = None) -> Iterator[FleetNode]:
        """The nodes whose id sorts after `after` (every node: None), by node id, built as
        read."""
        ...


@dataclass(slots=True)
class _Known:
    record: NodeRecord
    #: When this instance learnt that the node's entry is gone (None while it is there).
    gone_at: float | None = None
    #: Gone by a DEL/PURGE marker: offline at once. An entry that vanished without one reads
    #: as its last heartbeat says until that ages past `offline_after`, as a silent node's.
    marked: bool = False
    #: The state last logged, to log changes once.
    logged: NodeState | None = None


@dataclass(slots=True)
class NodeStats:
    records: int = 0
    expiries: int = 0
    resyncs: int = 0
    #: Known nodes found with no entry at all when the bucket was listed.
    unlisted: int = 0
    bad_records: int = 0
    state_changes: int = 0
    forgotten: int = 0
    #: Records whose node beats too seldom for `offline_after` (warned once per interval).
    slow_beats: int = 0


class NodeTracker:
    def __init__(
        self,
        js: JetStreamContext,
        subjects: Subjects,
        *,
        offline_after: float = 30.0,
        forget_after: float = 86400.0,
        resync_interval: float = 60.0,
        sweep_interval: float | None = None,
        snapshot_timeout: float = 10.0,
    ) -> None:
        self.js, self.subjects = js, subjects
        self.offline_after, self.forget_after = offline_after, forget_after
        self.resync_interval, self.snapshot_timeout = resync_interval, snapshot_timeout
        self.sweep_interval = sweep_interval or max(0.2, min(5.0, offline_after / 3))
        self.stats = NodeStats()
        self._known: dict[str, _Known] = {}
        self._resync = asyncio.Event()
        self._synced = asyncio.Event()
        self._revision = 0
        self._moved = asyncio.Condition()
        #: The bucket's stream's creation time, as the current watcher started on it.
        self._born: datetime | None = None

    # -- reading ------------------------------------------------------------------------------
    def nodes(self, now: float | None = None) -> list[FleetNode]:
        now = time.time() if now is None else now
        known = self._known
        return [FleetNode(known[n].record, self._state(known[n], now)) for n in sorted(known)]

    def iter_nodes(self, now: float | None = None) -> Iterator[FleetNode]:
        """The nodes in no particular order, built one at a time: a check that stops at the
        first fit (a submit's) reads one node, not the whole fleet."""
        now = time.time() if now is None else now
        for known in list(self._known.values()):
            yield FleetNode(known.record, self._state(known, now))

    def nodes_after(self, after: str | None, now: float | None = None) -> Iterator[FleetNode]:
        """By node id from past `after`, built as read: a page of `node.list` builds its own
        nodes, not the fleet's (reading a fleet page by page built it once per page)."""
        now = time.time() if now is None else now
        known = self._known
        for node_id in sorted(n for n in known if after is None or n > after):
            entry = known.get(node_id)  # forgotten while the reader was away
            if entry is not None:
                yield FleetNode(entry.record, self._state(entry, now))

    def _state(self, known: _Known, now: float) -> NodeState:
        return node_state(known.record.heartbeat, known.marked, now, self.offline_after)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._synced.wait()
        return self.synced

    async def wait_revision(self, revision: int, within: float) -> bool:
        """True once the bucket's entries up to `revision` (a put's return value) are applied."""
        async with self._moved:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await self._moved.wait_for(lambda: self._revision >= revision)
            return self._revision >= revision

    # -- running ------------------------------------------------------------------------------
    def resync(self) -> None:
        """Re-create the watcher and re-read the bucket (call it from the reconnected callback)."""
        self._resync.set()

    async def run(self) -> None:
        """Watch and sweep until cancelled; errors (NATS away) restart the watch."""
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
            self.sweep()

    async def watch_once(self) -> None:
        """One watcher's life: the whole bucket, then live updates until the next resync."""
        kv = await self.js.key_value(self.subjects.nodes_bucket)
        self._resync.clear()
        born = await bucket_born(self.js, self.subjects)
        if born != self._born:
            # A bucket made again numbers its revisions from 1.
            if self._born is not None:
                log.info("node bucket re-created; following the new one")
            self._born = born
            async with self._moved:
                self._revision = 0
        # nats-py's KeyWatcher is untyped.
        watcher: Any = await kv.watchall()
        try:
            # Listed after the watcher started: a node missing here and writing later is seen.
            listed = set(await node_keys(self.js, self.subjects))
            for node_id, known in self._known.items():
                if node_id not in listed and known.gone_at is None:
                    # No entry and no marker: purged, or the bucket re-created under us
                    # (`--renew-node-bucket`), where every live node writes again within its
                    # interval. Offline when its last beat ages out, as for a silent node, not
                    # at once: a whole fleet read offline would refuse every submit.
                    self.stats.unlisted += 1
                    known.gone_at = time.time()
            waiting: set[str] | None = listed
            snapshot_until = time.monotonic() + self.snapshot_timeout
            until = time.monotonic() + self.resync_interval
            check_born = time.monotonic() + _BORN_CHECK
            while not self._resync.is_set() and time.monotonic() < until:
                if time.monotonic() >= check_born:
                    # A watcher on a deleted and re-created bucket waits for sequence numbers
                    # the new stream reaches only much later: it goes blind, with no error.
                    check_born = time.monotonic() + _BORN_CHECK
                    if await bucket_born(self.js, self.subjects) != born:
                        self._resync.set()
                        continue
                if waiting is not None and (not waiting or time.monotonic() >= snapshot_until):
                    self._snapshot_read(waiting)
                    waiting = None
                # Not watcher.updates(): its asyncio.wait_for (Python 3.11) swallows a
                # cancellation that meets an entry, and the tracker would never stop.
                try:
                    async with asyncio.timeout(_POLL):
                        entry = await anext(watcher)
                except TimeoutError:
                    continue
                if entry is not None:  # None: nats-py's end of the initial values
                    await self.apply(entry)
                    if waiting is not None:
                        waiting.discard(entry.key)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    def _snapshot_read(self, unseen: set[str]) -> None:
        if unseen:  # their last message aged out before the watcher delivered it
            log.info("node entries listed but not delivered: %s", ", ".join(sorted(unseen)))
        self.stats.resyncs += 1
        self._synced.set()
        self.sweep()

    async def apply(self, entry: KeyValue.Entry) -> None:
        """One KV entry: a put replaces the node's record, a DEL/PURGE marker marks it gone."""
        node_id = entry.key
        known = self._known.get(node_id)
        if entry.operation in _MARKERS:
            self.stats.expiries += 1
            if known is not None:
                self._gone(known)
        else:
            try:
                record = NODE_RECORD_DECODER.decode(entry.value or b"")
                if record.capabilities.node_id != node_id:
                    raise DecodeError("node record", f"names {record.capabilities.node_id!r}")
            except DecodeError as exc:
                self.stats.bad_records += 1
                log.warning("node %s: unreadable KV record: %s", node_id, exc)
            else:
                logged = None if known is None else known.logged
                before = None if known is None else known.record.heartbeat.interval_s
                self._known[node_id] = _Known(record, logged=logged)
                self.stats.records += 1
                if record.heartbeat.interval_s != before:
                    self._check_interval(node_id, record.heartbeat.interval_s)
        async with self._moved:
            self._revision = max(self._revision, entry.revision or 0)
            self._moved.notify_all()

    def _check_interval(self, node_id: str, interval: float) -> None:
        """The daemon's heartbeat and the control plane's threshold live in separate files on
        separate machines: a node whose two beats do not fit in `offline_after` reads offline
        between them, and flaps. Said once per node and interval."""
        if interval and 2 * interval > self.offline_after:
            self.stats.slow_beats += 1
            log.warning(
                "node %s beats every %gs: two beats do not fit in node_offline_after (%gs), so it "
                "will read offline between beats; lower its heartbeat_interval to at most %gs or "
                "raise node_offline_after", node_id, interval, self.offline_after,
                self.offline_after / 2,
            )  # fmt: skip

    @staticmethod
    def _gone(known: _Known) -> None:
        known.marked = True
        if known.gone_at is None:
            known.gone_at = time.time()

    def sweep(self, now: float | None = None) -> list[tuple[str, NodeState]]:
        """Log state changes and forget nodes gone for `forget_after`; returns the changes."""
        now = time.time() if now is None else now
        changed: list[tuple[str, NodeState]] = []
        for node_id, known in list(self._known.items()):
            if known.gone_at is not None and now - known.gone_at > self.forget_after:
                del self._known[node_id]
                self.stats.forgotten += 1
                log.info(
                    "node %s forgotten: gone from the bucket for %gs", node_id, self.forget_after
                )
                continue
            state = self._state(known, now)
            if state != known.logged:
                known.logged = state
                changed.append((node_id, state))
                log.info("node %s is %s", node_id, state)
        self.stats.state_changes += len(changed)
        return changed
