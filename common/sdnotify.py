"""sd_notify over $NOTIFY_SOCKET: tell systemd the daemon is ready, alive, reloading or stopping.

Implemented directly (no libsystemd binding): one datagram per message. Without NOTIFY_SOCKET
(not run by systemd, or in tests) every call is a no-op that returns False.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        # "@name" is Linux's abstract namespace: the address starts with a NUL byte instead.
        self._address = "\0" + raw[1:] if raw.startswith("@") else raw
        self._sock: socket.socket | None = None
        if raw.startswith(("/", "@")) and len(raw) > 1:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            # Called from the event loop: a full socket buffer drops a message, never blocks.
            self._sock.setblocking(False)
        self._interval = _watchdog_interval(env)

    @classmethod
    def from_environ(cls, *, unset: bool = True) -> Notifier:
        """Like sd_notify(unset_environment=1): ffmpeg children must not inherit the socket."""
        notifier = cls(dict(os.environ))
        if unset:
            _unset(os.environ)
        return notifier

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> bool:
        if self._sock is None:
            return False
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            # EAGAIN, or systemd gone (ENOENT/ECONNREFUSED): notifications are best effort.
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # systemd compares MONOTONIC_USEC with its own CLOCK_MONOTONIC, which time.monotonic reads.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for more start/stop time, e.g. a drain deadline longer than TimeoutStopSec."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half of WatchdogSec), or None when no watchdog is set for us."""
        return self._interval

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = int(env.get("WATCHDOG_PID") or os.getpid())
    except ValueError:
        return None
    if usec <= 0 or pid != os.getpid():
        return None
    return usec / 2 / 1_000_000


def _unset(env: MutableMapping[str, str]) -> None:
    for key in _ENV_KEYS:
        env.pop(key, None)


async def watchdog_task(notifier: Notifier, healthy: Callable[[], bool] | None = None) -> None:
    """Ping from the event loop itself, so a stuck loop stops pinging and systemd restarts us.

    Runs until cancelled; returns at once when no watchdog is configured. `healthy` returning
    False skips a ping (a wedged daemon should be restarted even if its loop still turns).
    """
    interval = notifier.watchdog_interval()
    if interval is None or not notifier.enabled:
        return
    while True:
        if healthy is None or healthy():
            notifier.watchdog()
        await asyncio.sleep(interval)
