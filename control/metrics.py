"""Prometheus metrics on a private registry, served from the last snapshot, never at scrape time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.httpserve import HttpServer
from common.procmetrics import identify
from control.alerts.rules import Snapshot
from control.db.holders import NOT_HOLDER
from schemas.alerts import Alert

log = logging.getLogger("flotilla.ready")
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)
#: API answers and event-loop lag: milliseconds to seconds.
FAST_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.build_info = identify(r, "control")
        self.jobs = Gauge(
            "flotilla_fleet_jobs",
            "Unfinished jobs by state and pool; for completed, failed and cancelled, those that"
            " finished within alerts.failure_rate_window",
            ["state", "pool"],
            registry=r,
        )
        self.queue_depth = Gauge("flotilla_queue_depth", "Jobs waiting", ["pool"], registry=r)
        self.oldest_wait = Gauge(
            "flotilla_queue_oldest_wait_seconds", "Oldest waiting job age", ["pool"], registry=r
        )
        self.nodes = Gauge(
            "flotilla_nodes", "Nodes by state and pool (once per pool served)", ["state", "pool"],
            registry=r,
        )  # fmt: skip
        self.fleet_nodes = Gauge(
            "flotilla_fleet_nodes", "Nodes by state, each counted once", ["state"], registry=r
        )
        self.job_duration = Histogram(
            "flotilla_control_job_duration_seconds",
            "Run time (start to finish, as recorded in Postgres) of jobs that finished",
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "flotilla_job_queue_wait_seconds", "Queue wait", buckets=WAIT_BUCKETS, registry=r
        )
        self.ingest_lag = Gauge("flotilla_ingest_lag_seconds", "Ingest lag", registry=r)
        self.ingest_batch = Histogram(
            "flotilla_ingest_batch_size", "Events per batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 5000), registry=r,
        )  # fmt: skip
        self.ingest_events = Counter("flotilla_ingest_events", "Events ingested", registry=r)
        self.api_request = Histogram(
            "flotilla_api_request_seconds",
            "API requests by verb: from this instance's handler taking the request to its reply"
            " (or error) being sent; time the request spent before (the network, the broker, a"
            " busy event loop) is not in it",
            ["verb"], buckets=FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "flotilla_control_loop_lag_seconds",
            "How late this instance's event loop woke a timer set every 0.1 s: while it is late,"
            " every request, ingest batch and watch update waits",
            buckets=FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self.gc_pause = Histogram(
            "flotilla_control_gc_pause_seconds",
            "The garbage collector's passes in this instance, by generation: each one holds the"
            " event loop for its whole length",
            ["generation"], buckets=FAST_BUCKETS, registry=r,
        )  # fmt: skip
        self.rejected_events = Counter(
            "flotilla_rejected_events",
            "Job events refused: their node does not hold the job's attempt",
            ["reason"],
            registry=r,
        )
        # The series exists from the start, so that increase() sees the first rejection.
        self.rejected_events.labels(NOT_HOLDER)
        self.postgres_up = Gauge("flotilla_postgres_up", "Postgres reachable", registry=r)
        self.nats_connected = Gauge("flotilla_nats_connected", "NATS connected", registry=r)
        self.leader = Gauge(
            "flotilla_control_leader",
            "1 while this instance holds the leader lease (runs alerts, canaries, retention)",
            registry=r,
        )
        self.alerts_firing = Gauge(
            "flotilla_alerts_firing", "Firing alerts", ["rule", "severity"], registry=r
        )
        self.deadline_at_risk = Counter(
            "flotilla_deadline_at_risk_jobs",
            "Unfinished jobs found at risk of missing their deadline (leader only), each once per"
            " reason: missed (the deadline passed) or late_estimate (estimated finish past it)",
            ["reason"],
            registry=r,
        )
        for reason in ("missed", "late_estimate"):
            self.deadline_at_risk.labels(reason)
        self.deadline_released = Counter(
            "flotilla_deadline_released_jobs",
            "Jobs with a deadline the leader released, earliest deadline first, into their"
            " tier's due lane",
            ["pool"],
            registry=r,
        )
        self.workflow_steps = Counter(
            "flotilla_workflow_steps",
            "Workflow steps the leader published, or held back (deferred) by their tenant's submit"
            " rate or queue limit until a later sweep",
            ["outcome"],
            registry=r,
        )
        for outcome in ("published", "deferred"):
            self.workflow_steps.labels(outcome)
        self.workflows_ended = Counter(
            "flotilla_workflows_ended",
            "Workflows the leader ended: completed, or failed (a step failed or was cancelled);"
            " a workflow cancelled through the API is not counted here",
            ["state"],
            registry=r,
        )
        for state in ("completed", "failed"):
            self.workflows_ended.labels(state)
        #: (job, reason) at risk in the last snapshot: a job is counted when it enters the set.
        self._at_risk: set[tuple[str, str]] = set()
        #: Monotonic time of the last snapshot the gauges show (None: none yet).
        self.updated_at: float | None = None

    def lead(self, leading: bool) -> None:
        """This instance gained or lost the leader lease: a former leader drops its fleet gauges
        at once, or a scrape would keep reading its last values beside the new leader's."""
        self.leader.set(1.0 if leading else 0.0)
        if not leading:
            self._clear_fleet()

    def _clear_fleet(self) -> None:
        for gauge in (self.queue_depth, self.oldest_wait, self.jobs, self.nodes, self.fleet_nodes):
            gauge.clear()
        self.alerts_firing.clear()

    def update(self, snap: Snapshot, firing: list[Alert], *, leading: bool = True) -> None:
        """Replace the gauges with one snapshot's values (labels that vanished go too).

        Fleet-wide gauges (queues, jobs, nodes, firing alerts) are the leader's alone: every
        instance sees the same fleet, so a dashboard's sum() over instances would count it once
        per instance. A follower exports none of them.
        """
        self.ingest_lag.set(snap.ingest_lag_s)
        self.updated_at = time.monotonic()
        self._clear_fleet()
        if not leading:
            self._at_risk = set()
            return
        self._count_at_risk(snap)
        for p in snap.pools:
            self.queue_depth.labels(p.pool).set(p.queued)
            self.oldest_wait.labels(p.pool).set(p.oldest_wait_s or 0.0)
        for (state, pool), count in snap.jobs.items():
            self.jobs.labels(state, pool).set(count)
        counts: dict[tuple[str, str], int] = {}
        per_state: dict[str, int] = {}
        for n in snap.nodes:
            per_state[n.state] = per_state.get(n.state, 0) + 1
            for pool in n.pools or ("none",):
                counts[(n.state, pool)] = counts.get((n.state, pool), 0) + 1
        for (state, pool), count in counts.items():
            self.nodes.labels(state, pool).set(count)
        for state, count in per_state.items():
            self.fleet_nodes.labels(state).set(count)
        per_rule: dict[tuple[str, str], int] = {}
        for a in firing:
            per_rule[(a.rule, a.severity)] = per_rule.get((a.rule, a.severity), 0) + 1
        for (rule, severity), count in per_rule.items():
            self.alerts_firing.labels(rule, severity).set(count)

    def _count_at_risk(self, snap: Snapshot) -> None:
        now = {
            (job, "missed" if job in snap.deadlines_missed else "late_estimate")
            for job in snap.deadlines_at_risk
        }
        for _, reason in now - self._at_risk:
            self.deadline_at_risk.labels(reason).inc()
        self._at_risk = now

    def observe_finished(self, rows: list[tuple[float | None, float | None]]) -> None:
        """(run time, queue wait) of jobs that finished since the last snapshot."""
        for run_s, wait_s in rows:
            if run_s is not None:
                self.job_duration.observe(max(0.0, run_s))
            if wait_s is not None:
                self.queue_wait.observe(max(0.0, wait_s))

    def server(self, host: str, port: int, ready: Callable[[], list[str]]) -> HttpServer:
        """/metrics, /healthz and /readyz; `ready` lists what keeps the instance from serving."""

        async def metrics() -> tuple[int, str, bytes]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

        async def healthz() -> tuple[int, str, bytes]:
            return 200, "text/plain", b"ok\n"

        async def readyz() -> tuple[int, str, bytes]:
            problems = ready()
            if not problems:
                return 200, "text/plain", b"ready\n"
            return 503, "text/plain", f"not ready: {'; '.join(problems)}\n".encode()

        return HttpServer(host, port, {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz})


class Readiness:
    """Whether this instance can serve: NATS, Postgres, a fresh snapshot and ingest keeping up.

    Every check is re-read on each call, so readiness recovers by itself once a dependency
    does; a change of the verdict is logged once (one line, no traceback).
    """

    def __init__(
        self, metrics: Metrics, nats_connected: Callable[[], bool], snapshot_max_age: float,
        ingest_max_lag: float,
    ) -> None:  # fmt: skip
        self.metrics, self.nats_connected = metrics, nats_connected
        self.snapshot_max_age, self.ingest_max_lag = snapshot_max_age, ingest_max_lag
        #: Set by whoever last talked to Postgres (the snapshot loop, ingest).
        self.postgres_ok = False
        self._lag, self._lag_at = 0.0, 0.0
        self._said: list[str] | None = None

    def ingest_batch(self, lag_s: float) -> None:
        """A batch was committed `lag_s` after its oldest event."""
        self._lag, self._lag_at = lag_s, time.monotonic()
        self.postgres_ok = True

    def problems(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        found = []
        if not self.nats_connected():
            found.append("nats disconnected")
        if not self.postgres_ok:
            found.append("postgres unreachable")
        at = self.metrics.updated_at
        if at is None or now - at > self.snapshot_max_age:
            found.append("fleet snapshot stale")
        # A lag only counts while ingest is still working through that backlog.
        if self._lag > self.ingest_max_lag and now - self._lag_at < self.snapshot_max_age:
            found.append(f"ingest {self._lag:.0f}s behind")
        if found != self._said:
            if found:
                log.warning("not ready: %s", "; ".join(found))
            elif self._said is not None:
                log.info("ready again")
            self._said = found
        return found
