"""Reload control.toml on SIGHUP (the unit's ExecReload): what applies live, what needs a restart.

Alert thresholds and the evaluation and canary intervals apply at once, and so does a changed
NATS url or credential (user/password, nkey seed, creds file, TLS files, also when rewritten in
place): the same client reconnects with it. Everything else (nats.prefix, Postgres, ports,
topology) is read once at start, so a changed key is only logged.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from pathlib import Path

import msgspec
from nats.aio.client import Client

from common.configfile import ConfigError
from common.natsconn import apply_settings
from common.sdnotify import Notifier
from control.alerts.canary import CanaryRunner
from control.alerts.rules import AlertEngine
from control.alerts.watcher import Watcher
from control.config import ControlConfig, load_control_config

log = logging.getLogger("flotilla.control")
LIVE = frozenset({"alerts", "alert_interval", "canary_interval", "canary_timeout", "log_json"})
#: Read once at start by the node tracker and the snapshot, though under `alerts`.
STARTUP_ALERT_KEYS = ("node_offline_after", "node_forget_after", "failure_rate_window")
Apply = Callable[[ControlConfig], list[str]]
#: The control plane's NATS client, once it has one.
Link = Callable[[], Client | None]


def apply(
    parts: tuple[AlertEngine, Watcher, CanaryRunner], old: ControlConfig, new: ControlConfig
) -> list[str]:
    """Apply `new` to the running parts; return the changed keys that need a restart."""
    engine, watcher, canary = parts
    engine.t, watcher.interval = new.alerts, new.alert_interval
    canary.interval, canary.timeout = new.canary_interval, new.canary_timeout
    before, after = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    stale = [k for k in after if k not in LIVE and k != "nats" and after[k] != before[k]]
    stale += [
        f"nats.{k}" for k in ("prefix", "partitions")
        if getattr(old.nats, k) != getattr(new.nats, k)
    ]  # fmt: skip
    stale += [
        f"alerts.{k}"
        for k in STARTUP_ALERT_KEYS
        if getattr(old.alerts, k) != getattr(new.alerts, k)
    ]
    return stale


async def reload(
    apply_new: Apply, path: Path | None, notifier: Notifier, link: Link = lambda: None
) -> None:
    notifier.reloading()
    try:
        new = await asyncio.to_thread(load_control_config, path)
        stale = apply_new(new)
    except ConfigError as exc:
        log.error("reload refused, keeping the running configuration: %s", exc)
    else:
        log.info("configuration reloaded")
        if stale:
            log.warning("changed keys that apply only after a restart: %s", ", ".join(stale))
        nc = link()
        try:
            if nc is not None and await apply_settings(nc, new.nats):
                log.info("nats connection settings changed: reconnecting with them")
        except Exception as exc:  # a TLS or key file that does not load
            log.error("nats settings refused, the connection keeps its own: %s", exc)
    notifier.ready()


def on_sighup(
    apply_new: Apply, path: Path | None, notifier: Notifier, link: Link = lambda: None
) -> set[asyncio.Task[None]]:
    """Reload on each SIGHUP (whose default action would kill us); returns the tasks in flight."""
    tasks: set[asyncio.Task[None]] = set()

    def handler() -> None:
        task = asyncio.create_task(reload(apply_new, path, notifier, link), name="reload")
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, handler)
    return tasks
