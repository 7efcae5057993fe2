"""A real daemon that SIGKILLs itself after a job's terminal event was PubAck'd, before its ack.

Run as `python -m tests.support.ack_crash_child --config daemon.toml`: the daemon is the real
one (`daemon.main`); only the ack is replaced by the crash, so the kill lands exactly between
the terminal publish and the ack, every time.
"""

from __future__ import annotations

import os
import signal
import sys

from nats.aio.msg import Msg

import daemon.job.end as end
from daemon.job.lease import ACK_RETRY_S
from daemon.main import main


async def _crash(msg: Msg, verb: bytes = b"+ACK", *, within: float = ACK_RETRY_S) -> bool:
    os.kill(os.getpid(), signal.SIGKILL)
    return False  # not reached


if __name__ == "__main__":
    end.settle = _crash
    sys.exit(main(sys.argv[1:]))
