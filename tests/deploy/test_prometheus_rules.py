"""The shipped Prometheus rules, evaluated in the suite against the real exporters' output.

promtool is not installed here, so the rules are evaluated by a small equivalent evaluator: a
selector with = / =~ matchers and at most one comparison, `absent(selector)`, and two such
joined by `and on(...)` or `unless on(...)`. Samples come from the real registries, with the
`job` and `instance` labels a scrape adds; `up` is Prometheus's own series, so it is written
here as a scrape would record it. Under promtool, `promtool check rules` would cover the
syntax too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control.alerts.rules import NodeView, PoolView, Snapshot
from control.config import AlertThresholds
from control.metrics import Metrics
from daemon.metrics import Metrics as DaemonMetrics
from schemas.alerts import Alert

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "control" / "prometheus" / "flotilla-rules.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
SIMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s*(?:(>|==|<)\s*([\d.]+))?$")
JOIN = re.compile(r"^(.*?)\s+(and|unless) on\(([\w, ]*)\)\s+(.*)$")
ABSENT = re.compile(r"^absent\((.*)\)$")
MATCHER = re.compile(r'(\w+)(=~|=)"([^"]*)"')

Sample = tuple[str, dict[str, str], float]


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def scraped(registry: CollectorRegistry, job: str = "", instance: str = "") -> list[Sample]:
    """The registry's samples as exposed, with the target labels a scrape adds (if given)."""
    text = generate_latest(registry).decode()
    target = {"job": job, "instance": instance} if job else {}
    return [
        (s.name, {**s.labels, **target}, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def samples(m: Metrics) -> list[Sample]:
    return scraped(m.registry)


def unparen(expr: str) -> str:
    """`expr` without parentheses around the whole of it (not `(a) unless on(x) (b)`)."""
    expr = expr.strip()
    if not expr.startswith("("):
        return expr
    depth = 0
    for i, ch in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return unparen(expr[1:-1]) if i == len(expr) - 1 else expr
    return expr


def evaluate(expr: str, data: list[Sample]) -> list[dict[str, str]]:
    """The label sets of the series `expr` returns (an alert fires once per set)."""
    expr = unparen(expr)
    join = JOIN.match(expr)
    if join:
        left, op, on, right = join.groups()
        keys = [k.strip() for k in on.split(",") if k.strip()]
        matched = {tuple(lb.get(k, "") for k in keys) for lb in evaluate(right, data)}
        return [
            lb for lb in evaluate(left, data)
            if (tuple(lb.get(k, "") for k in keys) in matched) == (op == "and")
        ]  # fmt: skip
    absent = ABSENT.match(expr)
    if absent:
        return [] if evaluate(absent.group(1), data) else [{}]
    match = SIMPLE.match(expr)
    assert match, f"not a rule this evaluator reads: {expr}"
    name, sel, op, num = match.groups()
    found = []
    for sname, labels, value in data:
        if sname != name:
            continue
        ok = True
        for key, mop, want in MATCHER.findall(sel or ""):
            have = labels.get(key, "")
            ok &= have == want if mop == "=" else re.fullmatch(want, have) is not None
        if ok and op:
            threshold = float(num)
            ok = {">": value > threshold, "==": value == threshold, "<": value < threshold}[op]
        if ok:
            found.append(labels)
    return found


def fires(expr: str, data: list[Sample]) -> bool:
    return bool(evaluate(expr, data))


def metrics(snap: Snapshot, up: bool = True) -> list[Sample]:
    m = Metrics()
    m.update(snap, [])
    m.postgres_up.set(1.0 if up else 0.0)
    m.nats_connected.set(1.0 if up else 0.0)
    return samples(m)


T = AlertThresholds()
GOOD = Snapshot(nodes=(NodeView("a", "online", ("cpu",)),), pools=(PoolView("cpu", 100, 600.0),))
CASES = {
    "FlotillaNodeOffline": Snapshot(nodes=(NodeView("a", "offline", ("cpu",)),)),
    "FlotillaQueueDepth": Snapshot(pools=(PoolView("cpu", T.queue_depth + 1),)),
    "FlotillaOldestWait": Snapshot(pools=(PoolView("cpu", 1, T.oldest_wait_seconds + 1),)),
    "FlotillaIngestLag": Snapshot(ingest_lag_s=T.ingest_lag_seconds + 1),
}


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_rules_are_well_formed() -> None:
    anchors = {
        slug(line.lstrip("#")) for line in OPERATIONS.read_text().splitlines()
        if line.startswith("#")
    }  # fmt: skip
    assert "flotillanodeoffline" in anchors and "metrics" in anchors
    for name, rule in rules().items():
        assert name.startswith("Flotilla") and rule["expr"] and "for" in rule
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]
        # Every rule links its runbook: a section of docs/operations.md named after it.
        url = rule["annotations"]["runbook_url"]
        assert url == f"docs/operations.md#{name.lower()}", name
        assert url.split("#")[1] in anchors, f"{name}: no section for {url}"


def test_threshold_rules_fire_and_stay_quiet() -> None:
    r = rules()
    quiet = metrics(GOOD)
    for name, snap in CASES.items():
        assert fires(r[name]["expr"], metrics(snap)), name
        assert not fires(r[name]["expr"], quiet), name
    assert fires(r["FlotillaPostgresDown"]["expr"], metrics(GOOD, up=False))
    assert not fires(r["FlotillaPostgresDown"]["expr"], quiet)


def test_builtin_alert_relay() -> None:
    expr = rules()["FlotillaBuiltinAlert"]["expr"]
    m = Metrics()
    hot = Alert(alert_id="a", rule="gpu_temperature", severity="warning", state="firing",
                subject="n1", summary="hot", fired_at=0.0)  # fmt: skip
    m.update(Snapshot(), [hot])
    assert fires(expr, samples(m))
    m.update(Snapshot(), [])
    assert not fires(expr, samples(m))


def test_pool_offline_with_work() -> None:
    expr = rules()["FlotillaPoolOfflineWithWork"]["expr"]
    assert "unless on(pool)" in expr
    down = Snapshot(nodes=(NodeView("a", "offline", ("cpu",)),), pools=(PoolView("cpu", 3),))
    assert [lb["pool"] for lb in evaluate(expr, metrics(down))] == ["cpu"]
    assert evaluate(expr, metrics(GOOD)) == []
    # An online node of another pool does not keep it quiet.
    elsewhere = Snapshot(
        nodes=(NodeView("a", "online", ("gpu",)),), pools=(PoolView("cpu", 3), PoolView("gpu", 0))
    )
    assert [lb["pool"] for lb in evaluate(expr, metrics(elsewhere))] == ["cpu"]


def fleet(*, control_nats: bool = True, daemon_nats: bool = True) -> list[Sample]:
    """One control plane and two daemons as Prometheus scrapes them (their real registries)."""
    control = Metrics()
    control.update(GOOD, [])
    control.nats_connected.set(1.0 if control_nats else 0.0)
    control.postgres_up.set(1.0)
    d1, d2 = DaemonMetrics(), DaemonMetrics()
    d1.nats_connected.set(1.0 if daemon_nats else 0.0)
    d2.nats_connected.set(1.0)
    return (
        scraped(control.registry, "flotilla-control", "control-01:9465")
        + scraped(d1.registry, "flotilla-daemon", "gpu-01")
        + scraped(d2.registry, "flotilla-daemon", "gpu-02")
    )


def test_nats_disconnected_names_its_component() -> None:
    r = rules()
    control, daemon = r["FlotillaNatsDisconnected"], r["FlotillaDaemonNatsDisconnected"]
    assert control["labels"]["component"] == "control"
    assert "control plane" in control["annotations"]["summary"]
    assert daemon["labels"]["component"] == "daemon"
    assert "daemon" in daemon["annotations"]["summary"]
    # A daemon's disconnection is the daemon rule's alone, for that daemon.
    data = fleet(daemon_nats=False)
    assert evaluate(control["expr"], data) == []
    assert [lb["instance"] for lb in evaluate(daemon["expr"], data)] == ["gpu-01"]
    # The control plane's is the control rule's alone.
    data = fleet(control_nats=False)
    assert [lb["instance"] for lb in evaluate(control["expr"], data)] == ["control-01:9465"]
    assert evaluate(daemon["expr"], data) == []
    assert evaluate(control["expr"], fleet()) == evaluate(daemon["expr"], fleet()) == []


def up(job: str, instance: str, value: float) -> Sample:
    """Prometheus's own series for one target: 1 when the last scrape answered."""
    return ("up", {"job": job, "instance": instance}, value)


def test_build_info_names_each_component() -> None:
    info = [(n, lb) for n, lb, v in fleet() if n == "flotilla_build_info" and v == 1.0]
    assert sorted(lb["component"] for _, lb in info) == ["control", "daemon", "daemon"]
    assert all(lb["version"] for _, lb in info)
    # The process collector on each registry, where the platform has /proc (Linux).
    has_proc = Path("/proc/self/stat").exists()
    assert ("process_cpu_seconds_total" in {n for n, _, _ in fleet()}) == has_proc


def test_control_plane_down_or_gone() -> None:
    r = rules()
    down, absent = r["FlotillaControlPlaneDown"]["expr"], r["FlotillaControlPlaneAbsent"]["expr"]
    answering = [*fleet(), up("flotilla-control", "control-01:9465", 1.0)]
    assert not fires(down, answering) and not fires(absent, answering)
    # Scraped and not answering: `up` is 0, and none of its series are left.
    daemons = [s for s in fleet() if s[1]["job"] == "flotilla-daemon"]
    silent = [*daemons, up("flotilla-control", "control-01:9465", 0.0)]
    assert [lb["instance"] for lb in evaluate(down, silent)] == ["control-01:9465"]
    assert fires(absent, silent)
    # No longer scraped at all (no target, so no `up`): only absent() sees it.
    assert not fires(down, daemons) and fires(absent, daemons)
    # A daemon's target going down is not the control plane's.
    assert not fires(down, [*answering, up("flotilla-daemon", "gpu-01", 0.0)])


def test_daemon_down() -> None:
    expr = rules()["FlotillaDaemonDown"]["expr"]
    data = [*fleet(), up("flotilla-control", "control-01:9465", 0.0)]
    assert not fires(expr, [*data, up("flotilla-daemon", "gpu-01", 1.0)])
    hit = evaluate(expr, [*data, up("flotilla-daemon", "gpu-01", 0.0)])
    assert [lb["instance"] for lb in hit] == ["gpu-01"]


def test_a_healthy_fleet_fires_nothing() -> None:
    # Every rule this evaluator reads (all but the range one, increase(), which
    # tests/unit/test_holders.py checks by its expression), against a whole healthy fleet.
    data = [
        *fleet(),
        up("flotilla-control", "control-01:9465", 1.0),
        up("flotilla-daemon", "gpu-01", 1.0),
        up("flotilla-daemon", "gpu-02", 1.0),
    ]
    read = 0
    for name, rule in rules().items():
        if "increase(" in rule["expr"]:
            continue
        assert evaluate(rule["expr"], data) == [], name
        read += 1
    assert read == len(rules()) - 1
