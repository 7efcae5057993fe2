"""SIGHUP for the daemon: re-read the config file and apply what can change while running.

Labels, pools, slots, the disk watermark, processing windows and `aging_every` apply at once
(windows an operator set at run time stay in force over the file's: daemon.app). A changed NATS
url or credential (user/password, nkey seed, creds file, TLS files, also when rewritten in place)
makes the same client reconnect with it: running jobs keep their messages and ack through it.
node_id, state_dir and nats.prefix / nats.partitions need a restart and are kept (with a
warning). A file that does not load is refused and nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

import msgspec

from common.natsconn import apply_settings
from common.sdnotify import Notifier
from daemon.config import DaemonConfig, load_daemon_config
from daemon.diskguard import DiskGuard
from daemon.heartbeat import Advertiser
from daemon.job.deps import JobDeps
from daemon.job.requirements import NodeView
from daemon.pull.slots import Slots
from daemon.wiring import Backend

log = logging.getLogger("flotilla.daemon")


class Reloadable(Protocol):
    """The parts of the running daemon (daemon.app.Daemon) that a reload reads or changes."""

    cfg: DaemonConfig
    config_path: Path | None
    notifier: Notifier
    deps: JobDeps
    disk: DiskGuard
    advertiser: Advertiser
    node: NodeView
    slots: Slots
    draining: bool

    @property
    def backend(self) -> Backend: ...

    def apply_pools(self, cfg: DaemonConfig) -> None: ...
    def apply_schedule(self, cfg: DaemonConfig) -> None: ...
    async def disk_changed(self) -> None: ...
    async def start_pullers(self) -> None: ...
    def status_line(self) -> str: ...


async def reload_daemon(d: Reloadable) -> None:
    """SIGHUP: labels, pools and slots from the file; NATS credentials on the same client."""
    d.notifier.reloading()
    try:
        new = await asyncio.to_thread(load_daemon_config, d.config_path)
    except Exception as exc:
        log.error("reload refused: %s", exc)
    else:
        old = d.cfg
        kept = [k for k in ("node_id", "state_dir") if getattr(new, k) != getattr(old, k)]
        kept += [
            f"nats.{k}" for k in ("prefix", "partitions")
            if getattr(new.nats, k) != getattr(old.nats, k)
        ]  # fmt: skip
        if kept:
            log.warning("%s: a change needs a restart; kept", ", ".join(kept))
        nats = msgspec.structs.replace(
            new.nats, prefix=old.nats.prefix, partitions=old.nats.partitions
        )
        try:
            if await apply_settings(d.backend.nc, nats):
                log.info("nats connection settings changed: reconnecting with them")
        except Exception as exc:  # a TLS or key file that does not load
            log.error("nats settings refused, the connection keeps its own: %s", exc)
            nats = old.nats
        new = msgspec.structs.replace(new, node_id=old.node_id, nats=nats, state_dir=old.state_dir)
        d.apply_schedule(new)  # before the swap: it compares the file's old windows
        d.cfg = d.deps.cfg = new
        d.apply_pools(new)
        if await d.disk.check():  # the watermark may have moved
            await d.disk_changed()
        caps = msgspec.structs.replace(
            d.advertiser.caps, labels=dict(new.labels), pools=list(d.node.pools),
            slots={p: d.slots.capacity(p) for p in d.slots.pools},
        )  # fmt: skip
        try:
            await d.advertiser.set_capabilities(caps)
        except Exception as exc:  # NATS away: the next heartbeat carries it
            log.warning("advertising reloaded capabilities failed: %s", exc)
        if not d.draining:
            await d.start_pullers()
        log.info("reloaded: pools %s, slots %s", d.node.pools, d.slots.free_all())
    d.notifier.ready(d.status_line())
