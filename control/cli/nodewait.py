"""What `flotilla drain --wait` waits for, and how it shows the wait on a terminal or in a log.

A node is drained when its heartbeat says `draining`, no job runs there and every slot is free.
The last part matters: a puller reserves slots before it fetches, so a heartbeat sent between the
drain request and the puller's stop may show no running job while a fetch can still hand it one.
"""

from __future__ import annotations

from typing import TextIO

from schemas import api


def drained(node: api.NodeInfo) -> bool:
    hb = node.heartbeat
    if hb is None or hb.state != "draining" or hb.running_jobs:
        return False
    return all(hb.free_slots.get(pool, 0) >= n for pool, n in hb.slots.items())


def node_status(node: api.NodeInfo) -> str:
    """`draining, 2 running: job-a, job-b` — what the wait is waiting on."""
    hb = node.heartbeat
    if hb is None:
        return f"{node.state}, no heartbeat yet"
    if hb.state != "draining":
        return f"{hb.state}, waiting for the drain to take effect"
    if not hb.running_jobs:
        return "draining, stopping its pullers"
    shown = ", ".join(hb.running_jobs[:5]) + (" …" if len(hb.running_jobs) > 5 else "")
    return f"draining, {len(hb.running_jobs)} running: {shown}"


class DrainWatch:
    """On a TTY one line rewritten in place; elsewhere a plain line each time the status changes."""

    def __init__(self, node_id: str, out: TextIO, tty: bool, *, quiet: bool = False) -> None:
        self.node_id, self.out, self.tty, self.quiet = node_id, out, tty, quiet
        self._last = ""

    def show(self, status: str) -> None:
        if status == self._last or self.quiet:
            return
        self._last = status
        line = f"{self.node_id}: {status}"
        if self.tty:
            self.out.write("\r\x1b[2K" + line)
        else:
            self.out.write(line + "\n")
        self.out.flush()

    def done(self, line: str) -> None:
        """The final line (empty: only end the in-place line)."""
        if self.quiet:
            return
        if self.tty and self._last:
            self.out.write("\r\x1b[2K")
        if line:
            self.out.write(line + "\n")
        self.out.flush()
