"""The media object stores' sweep: what writers without purge rights leave behind.

Nodes and producers may not purge (a purge's subject filter cannot be permissioned), so an
overwrite stores the new chunks under a fresh nuid and appends a new meta message, and a delete
appends a tombstone (daemon.media.objstore). The leader, which keeps full rights, keeps only the
last meta message of each name and purges the chunk subjects that no current meta references.
A chunk subject is purged only once it has been seen unreferenced for `grace` seconds and its
newest chunk is older than `grace` too: an upload in progress (chunks, no meta yet) and a reader
still streaming a superseded version are left alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.aio.client import Client
from nats.js.errors import NotFoundError

log = logging.getLogger("flotilla.objsweep")

#: Stream names the sweep asks for per request (the server's page size for STREAM.NAMES).
_NAMES_PAGE = 1024


@dataclass
class SweepStats:
    buckets: int = 0
    metas_purged: int = 0
    orphans_purged: int = 0


class OrphanSweep:
    """Sweeps `<prefix>_media` and every `<prefix>_media_<tenant>` bucket; state is per term."""

    def __init__(
        self,
        nc: Client,
        media_bucket: str,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc, self.js = nc, nc.jetstream(timeout=10)
        self.media_bucket, self.grace, self.clock = media_bucket, grace, clock
        # Chunk subject -> when this sweep first saw it unreferenced (clock time).
        self._unreferenced: dict[str, float] = {}

    def reset(self) -> None:
        self._unreferenced.clear()

    async def buckets(self) -> list[str]:
        """The media buckets on the server: `OBJ_<media>` and `OBJ_<media>_*` streams."""
        stream = f"OBJ_{self.media_bucket}"
        names: list[str] = []
        offset = 0
        while True:
            req = json.dumps({"subject": "$O.>", "offset": offset}).encode()
            reply = await self.nc.request("$JS.API.STREAM.NAMES", req, timeout=10)
            body = json.loads(reply.data)
            if "error" in body:
                raise RuntimeError(f"stream names: {body['error']}")
            page: list[str] = body.get("streams") or []
            names += page
            offset += len(page)
            if not page or offset >= int(body.get("total", 0)) or len(page) < _NAMES_PAGE:
                break
        return sorted(
            n.removeprefix("OBJ_") for n in names if n == stream or n.startswith(f"{stream}_")
        )

    async def sweep(self) -> SweepStats:
        stats = SweepStats()
        seen: set[str] = set()
        for bucket in await self.buckets():
            stats.buckets += 1
            await self.sweep_bucket(bucket, stats, seen)
        # Forget subjects that are gone or referenced again.
        self._unreferenced = {s: t for s, t in self._unreferenced.items() if s in seen}
        return stats

    async def sweep_bucket(
        self, bucket: str, stats: SweepStats, seen: set[str] | None = None
    ) -> None:
        stream = f"OBJ_{bucket}"
        # Metas first: an upload that completes after this read has fresh chunks, so the age
        # check below spares them even though they look unreferenced.
        metas = await self._subjects(stream, f"$O.{bucket}.M.>")
        live: set[str] = set()
        for subject, count in metas.items():
            if count > 1:
                await self.js.purge_stream(stream, subject=subject, keep=1)
                stats.metas_purged += count - 1
            nuid = await self._live_nuid(stream, subject)
            if nuid:
                live.add(f"$O.{bucket}.C.{nuid}")
        chunks = await self._subjects(stream, f"$O.{bucket}.C.>")
        now = self.clock()
        for subject in chunks:
            if subject in live:
                continue
            if seen is not None:
                seen.add(subject)
            first = self._unreferenced.setdefault(subject, now)
            if now - first < self.grace or not await self._older_than_grace(stream, subject):
                continue
            await self.js.purge_stream(stream, subject=subject)
            self._unreferenced.pop(subject, None)
            stats.orphans_purged += 1
            log.info("purged orphaned chunks %s", subject)

    async def _subjects(self, stream: str, filter_: str) -> dict[str, int]:
        """Every subject under `filter_` with its message count, page by page: a partial list
        of metas would make live chunks look orphaned."""
        found: dict[str, int] = {}
        while True:
            req = json.dumps({"subjects_filter": filter_, "offset": len(found)}).encode()
            reply = await self.nc.request(f"$JS.API.STREAM.INFO.{stream}", req, timeout=10)
            body = json.loads(reply.data)
            if "error" in body:
                raise RuntimeError(f"stream info {stream}: {body['error']}")
            page: dict[str, int] = (body.get("state") or {}).get("subjects") or {}
            found.update(page)
            total = int(body.get("total") or 0)
            if not page or len(found) >= total:
                break
        if len(found) < total:
            raise RuntimeError(f"stream info {stream}: listed {len(found)} of {total} subjects")
        return found

    async def _live_nuid(self, stream: str, subject: str) -> str:
        """The nuid the name's last meta message points at; "" for a deleted or bad one."""
        try:
            msg = await self.js.get_last_msg(stream, subject)
            meta = json.loads(msg.data or b"{}")
        except (NotFoundError, ValueError):
            return ""
        if not isinstance(meta, dict) or meta.get("deleted"):
            return ""
        return str(meta.get("nuid") or "")

    async def _older_than_grace(self, stream: str, subject: str) -> bool:
        try:
            last = await self.js.get_last_msg(stream, subject)
        except NotFoundError:
            return False
        if last.time is None:
            return False
        return (datetime.now(UTC) - last.time).total_seconds() >= self.grace


async def run_sweeper(sweep: OrphanSweep, interval: float, stop: asyncio.Event) -> None:
    """Sweep every `interval` seconds until `stop` is set; broker trouble waits for the next."""
    while not stop.is_set():
        try:
            stats = await sweep.sweep()
            if stats.metas_purged or stats.orphans_purged:
                log.info(
                    "media sweep: %d superseded meta messages and %d orphaned chunk subjects "
                    "purged in %d buckets",
                    stats.metas_purged, stats.orphans_purged, stats.buckets,
                )  # fmt: skip
        except (nats.errors.Error, OSError, TimeoutError, RuntimeError) as exc:
            log.warning("media sweep failed: %s", exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
