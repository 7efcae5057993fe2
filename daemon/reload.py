"""SIGHUP for the daemon: re-read the config file and apply what can change while running.

Labels, pools, slots and the disk watermark apply at once; node_id, nats and state_dir need a
restart and are kept (with a warning). A file that does not load is refused and nothing changes.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

import msgspec

from common.sdnotify import Notifier
from daemon.config import DaemonConfig, load_daemon_config
from daemon.diskguard import DiskGuard
from daemon.heartbeat import Advertiser
from daemon.job.deps import JobDeps
from daemon.job.requirements import NodeView
from daemon.pull.slots import Slots

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

    def apply_pools(self, cfg: DaemonConfig) -> None: ...
    async def disk_changed(self) -> None: ...
    async def start_pullers(self) -> None: ...
    def status_line(self) -> str: ...


async def reload_daemon(d: Reloadable) -> None:
    """SIGHUP: labels, pools and slots from the file; the connection stays."""
    d.notifier.reloading()
    try:
        new = await asyncio.to_thread(load_daemon_config, d.config_path)
    except Exception as exc:
        log.error("reload refused: %s", exc)
    else:
        old = d.cfg
        if (new.node_id, new.nats, new.state_dir) != (old.node_id, old.nats, old.state_dir):
            log.warning("node_id, nats and state_dir changes need a restart: kept")
        new = msgspec.structs.replace(
            new, node_id=old.node_id, nats=old.nats, state_dir=old.state_dir
        )
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
