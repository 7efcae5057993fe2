"""Yielding the CPU for real: a process's nice value and, under autogroup scheduling, its
session's.

With autogroup (`/proc/sys/kernel/sched_autogroup_enabled`, on by default in Debian's and most
distributions' kernels, for processes in the root CPU cgroup), the scheduler shares the CPU
between sessions first and a process's own nice value ranks it only inside its session. A
simulator process leads its own session (the runner starts it so), so `nice` alone left it an
equal share with the control plane, nats-server and PostgreSQL, each in a session of its own.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

AUTOGROUP = Path("/proc/self/autogroup")
# The kernel takes one write a tenth of a second from a process without CAP_SYS_ADMIN, across
# all sessions: simulator processes started together retry for a while.
WRITE_TRIES = 20
WRITE_PAUSE_S = 0.11


def lower_priority(nice: int, autogroup: Path = AUTOGROUP) -> None:
    """Add `nice` to this process's niceness and, when it leads its own session, set the
    session's autogroup niceness to the result. A process that shares its session (say with
    the shell that started it) leaves the group alone: that would slow its neighbours too."""
    now = os.nice(nice)
    if os.getsid(0) != os.getpid():
        return
    for _ in range(WRITE_TRIES):
        try:
            autogroup.write_text(f"{now}\n")
            return
        except BlockingIOError:
            time.sleep(WRITE_PAUSE_S)  # before the node's loop starts: nothing else waits
        except OSError:
            return  # no autogroup in this kernel, or not allowed: the nice value stands alone


def autogroup_nice(autogroup: Path = AUTOGROUP) -> int | None:
    """This process's autogroup niceness, or None where the kernel has no autogroup or the
    process is in the boot session's group, which the kernel shows as an empty file (a service
    started without a session of its own, as a CI runner may be)."""
    try:
        text = autogroup.read_text()
    except OSError:
        return None
    found = re.search(r"nice\s+(-?\d+)", text)
    return None if found is None else int(found.group(1))
