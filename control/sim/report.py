"""The run's figures: a plain table for people, one JSON document for tools."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from control.sim.audit import IngestFigures, JobAudit
from control.sim.resources import Usage


def percentiles(samples: list[float]) -> dict[str, float] | None:
    if not samples:
        return None
    s = sorted(samples)

    def at(q: float) -> float:
        return s[min(len(s) - 1, int(q * len(s)))]

    return {"n": len(s), "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": s[-1],
            "mean": statistics.fmean(s)}  # fmt: skip


@dataclass
class Target:
    name: str
    limit: str
    measured: str
    met: bool


@dataclass
class Report:
    scenario: str
    nodes: int
    slots: dict[str, int]
    processes: int
    seed_jobs: int
    #: The simulator processes' niceness (0: they compete with the stack for the CPU).
    nodes_nice: int = 0
    wall_s: float = 0.0
    start_s: float = 0.0
    api: dict[str, dict[str, float] | None] = field(default_factory=dict)
    #: The control plane's own answer times by verb (bucket bounds, see `serverside`).
    server_api: dict[str, dict[str, float]] = field(default_factory=dict)
    #: Its event loop's lag over the run (bucket bounds).
    loop_lag: dict[str, float] | None = None
    #: The driver's own event loop lag: the client-side API figures were timed on that loop.
    driver_loop_lag: dict[str, float] | None = None
    #: Its garbage collector's passes, by generation (bucket bounds).
    gc_pauses: dict[str, dict[str, float]] = field(default_factory=dict)
    api_errors: dict[str, int] = field(default_factory=dict)
    api_last_error: dict[str, str] = field(default_factory=dict)
    dispatch: dict[str, float] | None = None
    ingest: IngestFigures = field(default_factory=IngestFigures)
    jobs: JobAudit = field(default_factory=JobAudit)
    offline_detect: dict[str, float] = field(default_factory=dict)
    offline_seen_as: dict[str, str] = field(default_factory=dict)
    offline_limit_s: float = 0.0
    #: The largest node.list reply the watcher read (the CLI refuses over 256 KiB).
    node_list_bytes: int = 0
    killed: list[str] = field(default_factory=list)
    alerts_expected: list[str] = field(default_factory=list)
    alerts_fired: dict[str, float] = field(default_factory=dict)
    alerts_other: list[str] = field(default_factory=list)
    usage: dict[str, Usage] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    threads: dict[str, int] = field(default_factory=dict)
    settled: bool = False
    notes: list[str] = field(default_factory=list)

    def targets(self) -> list[Target]:
        out = []
        for verb, limit in (("submit", 0.020), ("get", 0.010), ("list", 0.050)):
            p = self.api.get(verb)
            p95 = p["p95"] if p else float("nan")
            out.append(Target(f"{verb} p95", f"<= {limit * 1000:.0f} ms",
                              f"{p95 * 1000:.1f} ms", p is not None and p95 <= limit))  # fmt: skip
        lag = self.ingest.lag_p99
        out.append(Target("ingest lag p99", "<= 2 s", f"{lag:.2f} s", self.ingest.events > 0
                          and lag <= 2.0))  # fmt: skip
        detected = [self.offline_detect.get(n) for n in self.killed]
        late = [d for d in detected if d is None or d > self.offline_limit_s]
        worst = max((d for d in detected if d is not None), default=float("nan"))
        out.append(Target("node deaths detected", f"<= {self.offline_limit_s:.0f} s",
                          f"{len(self.killed) - len(late)}/{len(self.killed)}, worst {worst:.1f} s",
                          not late))  # fmt: skip
        fired = [n for n in self.alerts_expected if n in self.alerts_fired]
        in_time = [n for n in fired if self.alerts_fired[n] <= self.offline_limit_s]
        out.append(Target("node deaths alerted", f"<= {self.offline_limit_s:.0f} s",
                          f"{len(in_time)}/{len(self.alerts_expected)}",
                          len(in_time) == len(self.alerts_expected)))  # fmt: skip
        j = self.jobs
        out.append(Target("jobs lost / run twice", "0 / 0", f"{j.lost} / {j.duplicated}",
                          j.lost == 0 and j.duplicated == 0))  # fmt: skip
        return out


#: The API verbs the driver times, as the control plane names them.
SERVER_VERBS = {"job.submit": "submit", "job.get": "get", "job.list": "list", "node.list": "nodes"}


def _ms(p: dict[str, float] | None) -> str:
    if not p:
        return "-"
    return " / ".join(f"{p[k] * 1000:.1f}" for k in ("p50", "p95", "p99")) + f"  (n={p['n']:.0f})"


def render(r: Report) -> str:
    j, i = r.jobs, r.ingest
    lines = [
        f"flotilla sim: scenario {r.scenario}, {r.nodes} nodes x {r.slots} slots, "
        f"{r.processes} simulator processes"
        + (f" at nice {r.nodes_nice}" if r.nodes_nice else "")
        + f", {r.seed_jobs:,} seeded job rows",
        f"wall {r.wall_s:.0f} s (nodes up in {r.start_s:.0f} s)",
        "",
        "API latency ms p50 / p95 / p99",
    ]
    for verb in ("submit", "get", "list", "nodes"):
        err = r.api_errors.get(verb, 0)
        lines.append(f"  {verb:<8} {_ms(r.api.get(verb))}" + (f"  errors {err}" if err else ""))
    if r.driver_loop_lag:
        lines.append(f"  timed on a loop whose own lag was {_ms(r.driver_loop_lag)}")
    if r.server_api:
        lines.append("  the control plane's own answer times, ms, at most (histogram buckets):")
        for verb, name in SERVER_VERBS.items():
            lines.append(f"  {name:<8} {_ms(r.server_api.get(verb))}")
    if r.loop_lag:
        lines.append(f"  its event loop's lag, ms, at most: {_ms(r.loop_lag)}")
    for gen, q in sorted(r.gc_pauses.items()):
        lines.append(f"  its collector's generation-{gen} passes, ms, at most: {_ms(q)}")
    lines += [
        f"dispatch submit->start  {_ms(r.dispatch)}",
        f"ingest   lag p50 {i.lag_p50 * 1000:.0f} ms, p99 {i.lag_p99 * 1000:.0f} ms, "
        f"max {i.lag_max:.2f} s; {i.per_s:.1f} events/s (peak {i.peak_per_s:.0f}/s)",
        f"jobs     submitted {j.submitted}, confirmed {j.confirmed}, rows {j.rows}, "
        f"completed {j.completed} ({i.completed_per_s:.2f}/s); states {j.states}",
        f"         lost {j.lost}, run twice {j.duplicated}, stuck {j.stuck}, "
        f"redelivered {j.redelivered}; events {j.events} {j.events_by_kind}",
    ]
    for node in r.killed:
        d = r.offline_detect.get(node)
        a = r.alerts_fired.get(node)
        lines.append(
            f"death    {node}: offline seen after "
            + (f"{d:.1f} s ({r.offline_seen_as.get(node)})" if d is not None else "never")
            + ", node_offline alert "
            + (f"after {a:.1f} s" if a is not None else "never")
        )
    if r.node_list_bytes:
        lines.append(f"node.list reply {r.node_list_bytes / 1024:.0f} KiB")
    for verb, text in r.api_last_error.items():
        lines.append(f"last {verb} error: {text}")
    if r.alerts_other:
        lines.append(f"alerts   other: {', '.join(r.alerts_other[:10])}")
    lines += ["", f"{'component':<10} {'CPU %':>7} {'CPU s':>8} {'RSS MiB':>9} {'procs':>6}"]
    for name, u in r.usage.items():
        lines.append(f"{name:<10} {u.cpu_percent:>7.1f} {u.cpu_s:>8.1f} "
                     f"{u.rss_max / 2**20:>9.0f} {u.processes_max:>6}")  # fmt: skip
    if r.fds:
        lines.append(f"simulator fds {r.fds}, threads {r.threads}")
    lines += ["", f"{'target':<22} {'limit':<12} {'measured':<24} met"]
    for t in r.targets():
        lines.append(f"{t.name:<22} {t.limit:<12} {t.measured:<24} {'yes' if t.met else 'NO'}")
    lines += [f"note: {n}" for n in r.notes]
    return "\n".join(lines)


def as_json(r: Report) -> dict[str, Any]:
    out = asdict(r)
    out["usage"] = {k: {**asdict(u), "cpu_percent": u.cpu_percent} for k, u in r.usage.items()}
    out["targets"] = [asdict(t) for t in r.targets()]
    # Past the last bucket is infinite: JSON has no such number.
    out["server_api"] = {v: _finite(q) for v, q in r.server_api.items()}
    out["loop_lag"] = None if r.loop_lag is None else _finite(r.loop_lag)
    out["gc_pauses"] = {g: _finite(q) for g, q in r.gc_pauses.items()}
    return out


def _finite(q: dict[str, float]) -> dict[str, float | None]:
    return {k: None if math.isinf(v) else v for k, v in q.items()}
