"""The shipped Prometheus rules, evaluated in the suite against the real exporter's output.

promtool is not installed here, so the single-comparison rules are evaluated by a small
equivalent evaluator (selector with = / =~ matchers, one comparison); the one `unless` rule is
checked by hand below. Under promtool, `promtool check rules` would cover the syntax too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control.alerts.rules import NodeView, PoolView, Snapshot
from control.config import AlertThresholds
from control.metrics import Metrics
from schemas.alerts import Alert

RULES = Path(__file__).resolve().parents[2] / "control" / "prometheus" / "flotilla-rules.yml"
SIMPLE = re.compile(r"^(\w+)(?:\{(.*)\})?\s*(>|==|<)\s*([\d.]+)$")
MATCHER = re.compile(r'(\w+)(=~|=)"([^"]*)"')


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def samples(m: Metrics) -> list[tuple[str, dict[str, str], float]]:
    text = generate_latest(m.registry).decode()
    return [
        (s.name, s.labels, s.value)
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    ]


def fires(expr: str, data: list[tuple[str, dict[str, str], float]]) -> bool:
    match = SIMPLE.match(expr)
    assert match, f"not a simple rule: {expr}"
    name, sel, op, num = match.groups()
    threshold = float(num)
    for sname, labels, value in data:
        if sname != name:
            continue
        ok = True
        for key, mop, want in MATCHER.findall(sel or ""):
            have = labels.get(key, "")
            ok &= have == want if mop == "=" else re.fullmatch(want, have) is not None
        if ok and {">": value > threshold, "==": value == threshold, "<": value < threshold}[op]:
            return True
    return False


def metrics(snap: Snapshot, up: bool = True) -> list[tuple[str, dict[str, str], float]]:
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


def test_rules_are_well_formed() -> None:
    for name, rule in rules().items():
        assert name.startswith("Flotilla") and rule["expr"] and "for" in rule
        assert rule["labels"]["severity"] and rule["annotations"]["summary"]


def test_threshold_rules_fire_and_stay_quiet() -> None:
    r = rules()
    quiet = metrics(GOOD)
    for name, snap in CASES.items():
        assert fires(r[name]["expr"], metrics(snap)), name
        assert not fires(r[name]["expr"], quiet), name
    for name in ("FlotillaPostgresDown", "FlotillaNatsDisconnected"):
        assert fires(r[name]["expr"], metrics(GOOD, up=False))
        assert not fires(r[name]["expr"], quiet)


def test_builtin_alert_relay() -> None:
    expr = rules()["FlotillaBuiltinAlert"]["expr"]
    m = Metrics()
    hot = Alert(alert_id="a", rule="gpu_temperature", severity="warning", state="firing",
                subject="n1", summary="hot", fired_at=0.0)  # fmt: skip
    m.update(Snapshot(), [hot])
    assert fires(expr, samples(m))
    m.update(Snapshot(), [])
    assert not fires(expr, samples(m))


def test_pool_offline_with_work_by_hand() -> None:
    # (queue_depth > 0) unless on(pool) (nodes{state="online"} > 0), evaluated directly.
    def evaluate(snap: Snapshot) -> set[str]:
        data = metrics(snap)
        work = {lb["pool"] for n, lb, v in data if n == "flotilla_queue_depth" and v > 0}
        online = {
            lb["pool"] for n, lb, v in data
            if n == "flotilla_nodes" and lb.get("state") == "online" and v > 0
        }  # fmt: skip
        return work - online

    assert "unless on(pool)" in rules()["FlotillaPoolOfflineWithWork"]["expr"]
    down = Snapshot(nodes=(NodeView("a", "offline", ("cpu",)),), pools=(PoolView("cpu", 3),))
    assert evaluate(down) == {"cpu"}
    assert evaluate(GOOD) == set()
