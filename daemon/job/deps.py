"""What one job's run needs: its attempt (handed to the operation) and the daemon's services."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.config import DaemonConfig
from daemon.encoder_health import EncoderHealthTracker
from daemon.job.requirements import NodeView
from daemon.job.running import RunningJob, RunningJobs
from daemon.journal.reporter import Reporter, new_event_id, now
from schemas.jobs import JobSpec
from schemas.results import JobResult

#: The stop reason of a job the hard-timeout backstop ended (a failure, not a stop request).
HARD_TIMEOUT = "hard timeout"


@dataclass
class Attempt:
    """What an operation runner gets: the spec, attempt number, scratch dir and its handle."""

    spec: JobSpec
    number: int
    scratch: Path
    handle: RunningJob
    withdrawn: frozenset[str] = frozenset()
    #: Filled by the runner: encoders that failed in this attempt (for encoder health).
    encoder_failures: list[str] = field(default_factory=list)
    #: Told (encoder, argv) before each ffmpeg run; the first call emits the `started` event.
    on_command: CommandSink | None = None


CommandSink = Callable[[str | None, list[str]], Awaitable[None]]


#: Builds the operation's context and runs it (app.py wires `daemon.ops.run_operation`).
OperationRunner = Callable[[Attempt], Coroutine[Any, Any, JobResult]]


@dataclass
class JobDeps:
    cfg: DaemonConfig
    reporter: Reporter
    running: RunningJobs
    node: NodeView
    run_operation: OperationRunner
    on_finished: Callable[[str, str, float, JobResult | None], None] = lambda *_: None
    encoder_health: EncoderHealthTracker | None = None
    #: Told the pool of a job that just passed its soft timeout (a metric).
    on_slow: Callable[[str], None] = lambda _: None


def base_fields(deps: JobDeps, job_id: str, attempt: int) -> dict[str, Any]:
    return {
        "event_id": new_event_id(),
        "job_id": job_id,
        "node_id": deps.cfg.node_id,
        "attempt": attempt,
        "ts": now(),
    }
