"""What one job's run needs of the daemon: its services, and how to build and run an operation."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from common.supervise import RESTART, Policy, Supervisor
from daemon.config import DaemonConfig
from daemon.encoder_health import EncoderHealthTracker
from daemon.job.endquery import EndQuery
from daemon.job.failures import FailureCounts
from daemon.job.handle import JobHandle
from daemon.job.lease import Lease
from daemon.job.requirements import NodeView
from daemon.job.running import RunningJobs
from daemon.journal.reporter import Reporter, new_event_id, now
from daemon.ops.context import CommandSink, JobContext
from schemas.jobs import JobSpec
from schemas.results import JobResult


class ContextFactory(Protocol):
    """The operation's view of one attempt, with the node's tools, roots and progress sink
    (daemon/wiring.py makes it)."""

    def __call__(
        self,
        handle: JobHandle,
        spec: JobSpec,
        scratch: Path,
        *,
        withdrawn: frozenset[str],
        on_command: CommandSink,
    ) -> JobContext: ...


#: Runs the operation (app.py wires `daemon.ops.run_operation`).
OperationRunner = Callable[[JobContext], Coroutine[Any, Any, JobResult]]


@dataclass
class JobDeps:
    cfg: DaemonConfig
    reporter: Reporter
    running: RunningJobs
    node: NodeView
    new_context: ContextFactory
    run_operation: OperationRunner
    on_finished: Callable[[str, str, float, JobResult | None], None] = lambda *_: None
    encoder_health: EncoderHealthTracker | None = None
    #: Told the pool of a job that just passed its soft timeout (a metric).
    on_slow: Callable[[str], None] = lambda _: None
    #: Runs each job's watcher: a watcher that died would stop the in-progress acks, and
    #: JetStream would hand the job to a second node while this one still runs it.
    supervisor: Supervisor = field(default_factory=Supervisor)
    watcher_policy: Policy = RESTART
    #: Failed runs per job, fleet-wide (what max_attempts counts); None counts deliveries.
    failures: FailureCounts | None = None
    #: The lease of each job on this node by (tenant, job_id), from its acceptance until it has
    #: settled: a redelivery that arrives meanwhile is adopted (`Lease.adopt`), not run again.
    leases: dict[tuple[str, str], Lease] = field(default_factory=dict)
    #: Asks the control plane whether a redelivered job already ended on another node; None:
    #: never ask (every redelivery that did not end here runs).
    ask_ended: EndQuery | None = None


def base_fields(deps: JobDeps, job_id: str, attempt: int, tenant: str) -> dict[str, Any]:
    """What every event of the job carries: (tenant, job_id) names the job."""
    return {
        "event_id": new_event_id(),
        "job_id": job_id,
        "tenant": tenant,
        "node_id": deps.cfg.node_id,
        "attempt": attempt,
        "ts": now(),
    }
