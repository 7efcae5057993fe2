"""Leader lease: exactly one control-plane instance runs the singleton tasks at a time.

Ingest, the API and webhooks share work safely across instances; alert evaluation, canaries and
retention would act twice. The lease is one key in a JetStream KV bucket whose `max_age` is the
lease TTL: the leader re-writes the key every `ttl / 3` with a revision-checked `update`, so the
message never ages out while it lives. A dead leader stops writing and the key expires after
`ttl`; the next `create` by another instance (which only succeeds on an absent or deleted key)
wins. A leader that cannot renew considers itself deposed once `ttl` has passed since its last
successful renewal was *sent*, which is never later than the server's expiry of that write, so
two instances do not lead at once (short of clock-rate skew). A clean stop deletes the key
(revision-checked) so a follower takes over within one poll instead of one TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

log = logging.getLogger("flotilla.leader")
LEASE_KEY = "control"
OnChange = Callable[[bool], Awaitable[None]]


class LeaseError(Exception):
    """The lease bucket cannot hold a lease safely."""


class LeaderLease:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        instance_id: str,
        ttl: float,
        *,
        replicas: int = 1,
        key: str = LEASE_KEY,
    ) -> None:
        self.js, self.bucket, self.instance_id, self.key = js, bucket, instance_id, key
        self.ttl, self.replicas = ttl, replicas
        #: Seconds between renewals (leader) and between attempts to take over (follower).
        self.interval = ttl / 3
        #: Terms this instance has started, for tests and the log.
        self.terms = 0
        self._rev: int | None = None
        self._valid_until = 0.0

    @property
    def is_leader(self) -> bool:
        return self._rev is not None and time.monotonic() < self._valid_until

    async def open(self) -> KeyValue:
        try:
            kv = await self.js.key_value(self.bucket)
        except BucketNotFoundError:
            # Several instances may race here: same config, so add_stream is idempotent.
            return await self.js.create_key_value(
                bucket=self.bucket, history=1, ttl=self.ttl, replicas=self.replicas
            )
        # The server's TTL is what expires a lease: trust it over ours (e.g. after a config
        # change), and refuse a bucket without one, where a dead leader would lead forever.
        ttl = (await kv.status()).ttl
        if not ttl:
            raise LeaseError(f"KV bucket {self.bucket} has no TTL; delete it to have it re-made")
        if ttl != self.ttl:
            log.warning("bucket %s expires leases after %gs, not %gs", self.bucket, ttl, self.ttl)
            self.ttl, self.interval = ttl, ttl / 3
        return kv

    async def step(self, kv: KeyValue) -> None:
        """One attempt: renew the lease we hold, or take it if nobody holds it."""
        sent = time.monotonic()
        value = self.instance_id.encode()
        try:
            if self._rev is not None:
                self._rev = await kv.update(self.key, value, last=self._rev)
            else:
                self._rev = await kv.create(self.key, value)
        except KeyWrongLastSequenceError:
            # Someone else holds it (create), or took it after ours expired (update).
            self._rev = None
            return
        except (NatsError, TimeoutError) as exc:
            # Broker unreachable: keep the lease until it may have expired on the server.
            log.warning("leader lease %s failed: %s", "renewal" if self._rev else "attempt", exc)
            if self._rev is not None and time.monotonic() >= self._valid_until:
                self._rev = None
            return
        self._valid_until = sent + self.ttl

    async def release(self, kv: KeyValue) -> None:
        rev, self._rev = self._rev, None
        if rev is not None:
            with contextlib.suppress(NatsError, TimeoutError):
                await kv.delete(self.key, last=rev)

    async def _change(self, leading: bool, on_change: OnChange) -> bool:
        self.terms += leading
        log.info("%s %s the leader", self.instance_id, "is" if leading else "is no longer")
        await on_change(leading)
        return leading

    async def run(self, stop: asyncio.Event, on_change: OnChange) -> None:
        """Campaign until `stop`; `on_change(True)` starts a term, `on_change(False)` ends it."""
        kv = await self.open()
        leading = False
        try:
            while not stop.is_set():
                if leading and not self.is_leader:
                    # Lapsed while waiting: stop acting before a slow renewal attempt.
                    leading = await self._change(False, on_change)
                await self.step(kv)
                if self.is_leader != leading:
                    leading = await self._change(self.is_leader, on_change)
                # Wake before the lease could lapse, so a deposed leader stops in time.
                wait = self.interval
                if leading:
                    wait = max(0.0, min(wait, self._valid_until - time.monotonic()))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
        finally:
            if leading:
                await on_change(False)
            await self.release(kv)


class Term:
    """Named tasks that run only while this instance leads: started per term, cancelled after."""

    def __init__(
        self, runs: dict[str, Callable[[asyncio.Event], Coroutine[Any, Any, None]]]
    ) -> None:
        self.runs = runs
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._stop = asyncio.Event()

    def begin(self) -> None:
        self._stop = asyncio.Event()
        for name, run in self.runs.items():
            self.tasks[name] = asyncio.create_task(run(self._stop), name=f"leader:{name}")

    async def end(self) -> None:
        self._stop.set()
        tasks, self.tasks = list(self.tasks.values()), {}
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
