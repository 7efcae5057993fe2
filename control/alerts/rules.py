"""Alert rules as pure functions of a fleet snapshot; an engine fires/resolves with hysteresis."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS

from control.config import AlertThresholds
from schemas.alerts import Alert, Severity
from schemas.codec import encode
from schemas.subjects import Subjects


@dataclass(frozen=True, slots=True)
class NodeView:
    node_id: str
    state: str  # online | draining | offline
    pools: tuple[str, ...] = ()
    disk_percent: float = 0.0
    memory_percent: float = 0.0
    gpu_temps_c: tuple[float, ...] = ()


@dataclass(frozen=True, slots=True)
class PoolView:
    pool: str
    queued: int = 0
    oldest_wait_s: float | None = None


@dataclass(frozen=True, slots=True)
class Snapshot:
    nodes: tuple[NodeView, ...] = ()
    pools: tuple[PoolView, ...] = ()
    #: running job id -> seconds since its last progress
    running_idle_s: dict[str, float] = field(default_factory=dict)
    finished_in_window: int = 0
    failed_in_window: int = 0
    ingest_lag_s: float = 0.0
    #: pools whose latest canary did not complete in time
    canary_failed: tuple[str, ...] = ()
    #: (state, pool) -> job count, for the flotilla_fleet_jobs gauge: every unfinished job, and the
    #: finished ones of the failure-rate window
    jobs: dict[tuple[str, str], int] = field(default_factory=dict)
    #: node id -> its events rejected within the window (it reported on an attempt it does not
    #: hold)
    rejected_by_node: dict[str, int] = field(default_factory=dict)
    #: "tenant/job_id" -> seconds its deadline passed, or its estimated finish is past it, for
    #: unfinished jobs (leader only: control/alerts/snapshot.py with_deadlines)
    deadlines_at_risk: dict[str, float] = field(default_factory=dict)
    #: those of deadlines_at_risk whose deadline has passed
    deadlines_missed: frozenset[str] = frozenset()


#: (subject, value, threshold)
Finding = tuple[str, float, float]
Rule = Callable[[Snapshot, AlertThresholds], list[Finding]]


def node_offline(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    return [(n.node_id, 1.0, t.node_offline_after) for n in s.nodes if n.state == "offline"]


def pool_offline_with_work(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    online = {p for n in s.nodes if n.state == "online" for p in n.pools}
    return [
        (p.pool, float(p.queued), 0.0) for p in s.pools if p.queued > 0 and p.pool not in online
    ]


def pool_offline(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    """A pool that must be served has no online node, whether or not work waits."""
    online = {p for n in s.nodes if n.state == "online" for p in n.pools}
    pools = [p.pool for p in s.pools] if t.required_pools is None else t.required_pools
    return [(p, 0.0, 1.0) for p in sorted(set(pools)) if p not in online]


def queue_depth(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    return [
        (p.pool, float(p.queued), float(t.queue_depth)) for p in s.pools if p.queued > t.queue_depth
    ]


def oldest_wait(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    lim = t.oldest_wait_seconds
    return [
        (p.pool, p.oldest_wait_s, lim)
        for p in s.pools
        if p.oldest_wait_s is not None and p.oldest_wait_s > lim
    ]


def failure_rate(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    if s.finished_in_window < t.failure_rate_min_jobs:
        return []
    rate = s.failed_in_window / s.finished_in_window
    return [("fleet", rate, t.failure_rate)] if rate > t.failure_rate else []


def node_disk(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    lim = t.disk_percent
    return [
        (n.node_id, n.disk_percent, lim)
        for n in s.nodes
        if n.state != "offline" and n.disk_percent > lim
    ]


def node_memory(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    lim = t.memory_percent
    return [
        (n.node_id, n.memory_percent, lim)
        for n in s.nodes
        if n.state != "offline" and n.memory_percent > lim
    ]


def gpu_temperature(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    lim = t.gpu_temperature_c
    out: list[Finding] = []
    for n in s.nodes:
        hot = [c for c in n.gpu_temps_c if c > lim]
        if n.state != "offline" and hot:
            out.append((n.node_id, max(hot), lim))
    return out


def stuck_job(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    lim = t.stuck_job_seconds
    return [(j, idle, lim) for j, idle in sorted(s.running_idle_s.items()) if idle > lim]


def ingest_lag(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    lim = t.ingest_lag_seconds
    return [("fleet", s.ingest_lag_s, lim)] if s.ingest_lag_s > lim else []


def canary_failed(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    return [(p, 1.0, 0.0) for p in s.canary_failed]


def rejected_events(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    return [(node, float(n), 0.0) for node, n in sorted(s.rejected_by_node.items()) if n > 0]


def deadline_at_risk(s: Snapshot, t: AlertThresholds) -> list[Finding]:
    """value: seconds past the deadline, now or by the estimated finish."""
    return [(job, late, 0.0) for job, late in sorted(s.deadlines_at_risk.items())]


RULES: dict[str, tuple[Rule, Severity]] = {
    "node_offline": (node_offline, "warning"),
    "pool_offline_with_work": (pool_offline_with_work, "critical"),
    "pool_offline": (pool_offline, "critical"),
    "queue_depth": (queue_depth, "warning"),
    "oldest_wait": (oldest_wait, "warning"),
    "failure_rate": (failure_rate, "critical"),
    "node_disk": (node_disk, "warning"),
    "node_memory": (node_memory, "warning"),
    "gpu_temperature": (gpu_temperature, "warning"),
    "stuck_job": (stuck_job, "warning"),
    "ingest_lag": (ingest_lag, "warning"),
    "canary_failed": (canary_failed, "critical"),
    "rejected_events": (rejected_events, "warning"),
    "deadline_at_risk": (deadline_at_risk, "warning"),
}


@dataclass(slots=True)
class _Track:
    hits: int = 0
    misses: int = 0
    alert: Alert | None = None


Sink = Callable[[Alert], Awaitable[None]]


def nats_sink(nc: NATS, subjects: Subjects) -> Sink:
    """Publish each fired or resolved alert on `<prefix>.alerts.<severity>.<rule>`."""

    async def sink(alert: Alert) -> None:
        await nc.publish(subjects.alerts(alert.severity, alert.rule), encode(alert))

    return sink


class AlertEngine:
    """Keeps per-(rule, subject) counters; a condition must hold (or clear) for `hysteresis`
    consecutive evaluations before it fires (or resolves), so one noisy sample changes nothing."""

    def __init__(self, thresholds: AlertThresholds, sink: Sink) -> None:
        self.t = thresholds
        self._sink = sink
        self._tracks: dict[tuple[str, str], _Track] = {}
        #: Only the leader instance evaluates (control/leader.py); others would fire twice.
        self.active = True

    def lead(self, firing: Iterable[Alert]) -> None:
        """Start evaluating, owning the alerts a previous leader left firing (so they resolve)."""
        h = self.t.hysteresis
        self._tracks = {(a.rule, a.subject): _Track(hits=h, alert=a) for a in firing}
        self.active = True

    def follow(self) -> None:
        """Stop evaluating and forget: the leader fires and resolves from now on."""
        self._tracks = {}
        self.active = False

    def firing(self) -> list[Alert]:
        return [tr.alert for tr in self._tracks.values() if tr.alert is not None]

    async def evaluate(self, snap: Snapshot, now: float | None = None) -> list[Alert]:
        if not self.active:
            return []
        now = time.time() if now is None else now
        changed: list[Alert] = []
        seen: set[tuple[str, str]] = set()
        for rule, (fn, severity) in RULES.items():
            for subject, value, threshold in fn(snap, self.t):
                key = (rule, subject)
                seen.add(key)
                tr = self._tracks.setdefault(key, _Track())
                tr.hits, tr.misses = tr.hits + 1, 0
                if tr.alert is None and tr.hits >= self.t.hysteresis:
                    tr.alert = Alert(
                        alert_id=secrets.token_hex(8),
                        rule=rule,
                        severity=severity,
                        state="firing",
                        subject=subject[:200],
                        summary=f"{rule} on {subject}: {value:g} (threshold {threshold:g})"[:200],
                        value=value,
                        threshold=threshold,
                        fired_at=now,
                    )
                    changed.append(tr.alert)
        for key in list(self._tracks):
            if key in seen:
                continue
            tr = self._tracks[key]
            tr.hits, tr.misses = 0, tr.misses + 1
            if tr.alert is not None and tr.misses >= self.t.hysteresis:
                a = tr.alert
                changed.append(
                    Alert(
                        alert_id=a.alert_id,
                        rule=a.rule,
                        severity=a.severity,
                        state="resolved",
                        subject=a.subject,
                        summary=a.summary,
                        value=a.value,
                        threshold=a.threshold,
                        fired_at=a.fired_at,
                        resolved_at=now,
                    )
                )
                tr.alert = None
            if tr.alert is None:
                del self._tracks[key]
        for alert in changed:
            await self._sink(alert)
        return changed
