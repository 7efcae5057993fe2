"""The report: per-fault rows and totals, as a plain table or as one JSON document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from control.devstack.chaos.audit import PhaseTally, StoreCount
from control.devstack.chaos.ledger import Episode, StormCount

COLUMNS = [
    ("fault", 16),
    ("episodes", 8),
    ("submitted", 9),
    ("exactly once", 12),
    ("more than once", 14),
    ("failed", 6),
    ("lost", 4),
    ("stuck", 5),
    ("pg differs", 10),
    ("redelivery s min/med/max", 24),
]


@dataclass
class Report:
    profile: str
    seed: int
    phases: list[PhaseTally] = field(default_factory=list)
    stores: dict[str, StoreCount] = field(default_factory=dict)
    partial_files: list[str] = field(default_factory=list)
    jobs_left: dict[str, int] = field(default_factory=dict)
    storm: StormCount = field(default_factory=StormCount)
    episodes: list[Episode] = field(default_factory=list)
    wall_s: float = 0.0
    disk_mode: str = ""

    def totals(self) -> PhaseTally:
        t = PhaseTally("total")
        for p in self.phases:
            for name in ("episodes", "submitted", "unconfirmed", "exactly_once",
                         "more_than_once", "failed", "lost", "stuck", "pg_mismatch"):  # fmt: skip
                setattr(t, name, getattr(t, name) + getattr(p, name))
            t.latencies += p.latencies
        return t

    @property
    def stream_equals_postgres(self) -> bool:
        return all(s.equal for s in self.stores.values())

    def ok(self) -> bool:
        """The invariants asserted today: nothing lost or stuck, no partials, stream = Postgres."""
        t = self.totals()
        return (
            t.lost == 0
            and t.stuck == 0
            and not self.partial_files
            and self.stream_equals_postgres
            and t.unconfirmed == 0
        )


def _lat(t: PhaseTally) -> str:
    lat = t.latency()
    return "-" if lat is None else "/".join(f"{x:.1f}" for x in lat)


def _row(t: PhaseTally) -> str:
    values = [t.phase, t.episodes, t.submitted, t.exactly_once, t.more_than_once, t.failed,
              t.lost, t.stuck, t.pg_mismatch, _lat(t)]  # fmt: skip
    widths = [w for _, w in COLUMNS]
    cells = [
        f"{v!s:<{w}}" if i == 0 else f"{v!s:>{w}}"
        for i, (v, w) in enumerate(zip(values, widths, strict=True))
    ]
    return "  ".join(cells)


def render(report: Report) -> str:
    head = "  ".join(f"{n:<{w}}" if i == 0 else f"{n:>{w}}" for i, (n, w) in enumerate(COLUMNS))
    lines = [head, "-" * len(head)]
    lines += [_row(p) for p in report.phases]
    lines += ["-" * len(head), _row(report.totals()), ""]
    for stage, s in report.stores.items():
        verdict = "equal" if s.equal else f"DIFFER (missing {s.missing}, extra {s.extra})"
        lines.append(
            f"events stream = Postgres [{stage}]: {verdict}; stream {s.stream_messages} messages "
            f"({s.stream_events} events, {s.stream_untrusted} malformed or spoofed), Postgres "
            f"{s.pg_events} job_events + {s.pg_bad} bad_events"
        )
    lines.append(f"partial files left: {len(report.partial_files)}")
    lines += [f"  {p}" for p in report.partial_files[:10]]
    for stage, left in report.jobs_left.items():
        lines.append(f"messages left in the jobs stream [{stage}]: {left}")
    st = report.storm
    if st.published:
        lines.append(
            f"malformed storm: {st.published} published, {st.stored} stored by the broker, "
            f"{st.refused} refused at publish"
        )
        stored = ", ".join(f"{k} {n}" for k, n in sorted(st.stored_by_kind.items()))
        lines.append(f"  stored by kind: {stored or 'none'}")
    unconfirmed = report.totals().unconfirmed
    if unconfirmed:
        lines.append(f"submissions never confirmed by the API: {unconfirmed}")
    for p in report.phases:
        for what, ids in p.examples.items():
            lines.append(f"  {p.phase} {what}: {', '.join(ids)}")
        for note in p.notes:
            lines.append(f"  {p.phase}: {note}")
    lines.append(
        f"profile {report.profile}, seed {report.seed}, disk full by {report.disk_mode}, "
        f"{report.wall_s:.0f} s; invariants (0 lost, 0 stuck, 0 partial, stream = Postgres): "
        + ("hold" if report.ok() else "BROKEN")
    )
    return "\n".join(lines)


def _tally_json(t: PhaseTally) -> dict[str, Any]:
    lat = t.latency()
    return {
        "fault": t.phase,
        "episodes": t.episodes,
        "submitted": t.submitted,
        "unconfirmed": t.unconfirmed,
        "completed_exactly_once": t.exactly_once,
        "run_more_than_once": t.more_than_once,
        "failed": t.failed,
        "lost": t.lost,
        "stuck": t.stuck,
        "postgres_state_differs": t.pg_mismatch,
        "redelivery_s": None
        if lat is None
        else dict(zip(("min", "median", "max"), lat, strict=True)),
        "examples": t.examples,
        "notes": t.notes,
    }


def as_json(report: Report) -> dict[str, Any]:
    return {
        "profile": report.profile,
        "seed": report.seed,
        "wall_s": round(report.wall_s, 1),
        "disk_full_mode": report.disk_mode,
        "faults": [_tally_json(p) for p in report.phases],
        "total": _tally_json(report.totals()),
        "events_stream_equals_postgres": report.stream_equals_postgres,
        "stores": {
            stage: {
                "stream_messages": s.stream_messages,
                "stream_events": s.stream_events,
                "stream_malformed": s.stream_untrusted,
                "postgres_job_events": s.pg_events,
                "postgres_bad_events": s.pg_bad,
                "missing": s.missing,
                "extra": s.extra,
                "missing_seqs": s.missing_seqs,
            }
            for stage, s in report.stores.items()
        },
        "partial_files": report.partial_files,
        "jobs_stream_left": report.jobs_left,
        "storm": {
            "published": report.storm.published,
            "stored": report.storm.stored,
            "refused": report.storm.refused,
            "by_kind": report.storm.by_kind,
            "stored_by_kind": report.storm.stored_by_kind,
        },
        "episodes": [
            {"fault": e.phase, "target": e.target, "start": e.start, "end": e.end, "note": e.note}
            for e in report.episodes
        ],
        "invariants_hold": report.ok(),
    }
