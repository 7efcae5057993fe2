"""The Grafana dashboard: well-formed, and every query names a metric the code really exports.

The exported names come from the real registries (daemon and control plane `Metrics`), with a
child added to each labelled metric so that its samples appear; a query's metric must match a
sample name exactly, which is what makes `_bucket`/`_sum`/`_count`/`_total` right: a histogram
has no bare sample, and a counter's sample carries `_total`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

from control.alerts.rules import NodeView, Snapshot
from control.metrics import Metrics as ControlMetrics
from daemon.metrics import Metrics as DaemonMetrics

GRAFANA = Path(__file__).resolve().parents[2] / "control" / "grafana"
DASHBOARD = GRAFANA / "flotilla-fleet.json"
DS_REF = {"type": "prometheus", "uid": "${datasource}"}

# PromQL words that are not series names (aggregations and functions are caught by their `(`).
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan"}  # fmt: skip
STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENT = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")  # not the unit of `5m` or `1e3`


def metric_names(expr: str) -> set[str]:
    """Series names in a PromQL expression (Grafana `$vars` and `label_values(m, l)` included)."""
    expr = STRINGS.sub('""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = LABEL_LISTS.sub("", expr)
    expr = re.sub(r"\blabel_values\s*\(([^,)]*),[^)]*\)", r"(\1)", expr)
    expr = re.sub(r"\$\w+", "", expr)
    names = set()
    for m in IDENT.finditer(expr):
        rest = expr[m.end() :].lstrip()
        if rest.startswith("(") or m.group(0) in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(m.group(0))
    return names


def sample_names(metrics: object) -> set[str]:
    """Every sample name the registry exposes once each labelled metric has one child."""
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:
            value.labels(*("x" for _ in value._labelnames))
    registry: CollectorRegistry = vars(metrics)["registry"]
    return {s.name for family in registry.collect() for s in family.samples}


def exported() -> set[str]:
    return sample_names(DaemonMetrics()) | sample_names(ControlMetrics())


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def queries(dash: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for p in all_panels(dash["panels"]):
        for t in p.get("targets", []):
            yield p["title"], t["expr"]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            yield f"${var['name']}", var["query"]["query"]


def test_the_extractor_reads_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le) (rate(m_bucket{job=~"$j", a="b{c}"}[$__interval])))'
        " / on(pool) group_left(state) count without (x) (other offset 5m) > bool 0"
    )
    assert metric_names(expr) == {"m_bucket", "other"}
    assert metric_names('label_values(flotilla_x{job=~"$j"}, instance)') == {"flotilla_x"}
    assert metric_names("sum(a) or vector(0)") == {"a"}


def test_exported_names_come_from_the_registries() -> None:
    names = exported()
    assert {"flotilla_jobs_total", "flotilla_daemon_job_duration_seconds_bucket"} <= names
    assert "flotilla_ingest_events_total" in names and "flotilla_ingest_events" not in names
    assert "flotilla_daemon_job_duration_seconds" not in names  # a histogram has no bare sample
    # One meaning per name: the control plane's gauge of jobs by state is not the daemon's
    # counter (whose family is `flotilla_jobs`), and each side's run-time histogram has its own.
    assert "flotilla_jobs" not in names and "flotilla_fleet_jobs" in names
    assert "flotilla_control_job_duration_seconds_bucket" in names
    assert "flotilla_job_duration_seconds_bucket" not in names


def test_every_query_names_an_exported_metric() -> None:
    names = exported()
    seen: set[str] = set()
    for title, expr in queries(dashboard()):
        found = metric_names(expr)
        assert found, f"{title}: no metric in {expr!r}"
        unknown = found - names
        assert not unknown, f"{title}: {sorted(unknown)} not exported by the code"
        seen |= found
    # The dashboard covers both sides: daemon and control plane.
    assert {"flotilla_slots_free", "flotilla_queue_depth", "flotilla_alerts_firing"} <= seen


def test_dashboard_is_well_formed() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = list(all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert {"h", "w", "x", "y"} <= g.keys(), p["title"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["y"] + dy, g["x"] + dx) for dy in range(g["h"]) for dx in range(g["w"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"] == DS_REF, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        assert all(t["datasource"] == DS_REF for t in p["targets"]), p["title"]
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == DS_REF
    for used in re.findall(r"\$\{?(\w+)", json.dumps(dash)):
        assert used.startswith("__") or used in variables, f"${used} is not a dashboard variable"


def test_provisioning_points_at_a_folder() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning.yml").read_text())
    assert doc["apiVersion"] == 1
    (provider,) = doc["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


def panel(title: str) -> dict[str, Any]:
    (found,) = (p for p in all_panels(dashboard()["panels"]) if p["title"] == title)
    return found


def defaults(dash: dict[str, Any]) -> dict[str, str]:
    """Each variable's value as the dashboard opens: a textbox's text, `All`'s regex."""
    values = {}
    for v in dash["templating"]["list"]:
        if v["type"] == "textbox":
            values[v["name"]] = v["query"]
        elif v.get("includeAll"):
            values[v["name"]] = v["allValue"]
    return values


SUM = re.compile(r"^sum\((\w+)\{([^}]*)\}\)$")


def evaluate_sum(expr: str, scraped: list[tuple[str, dict[str, str], float]]) -> float:
    """`sum(name{matchers})` over scraped samples, the variables at their defaults."""
    for name, value in defaults(dashboard()).items():
        expr = expr.replace(f"${name}", value)
    match = SUM.match(expr)
    assert match, f"not a sum over one selector: {expr}"
    name, sel = match.groups()
    total = 0.0
    for sname, labels, value in scraped:
        ok = sname == name
        for key, op, want in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', sel):
            have = labels.get(key, "")
            ok = ok and (have == want if op == "=" else re.fullmatch(want, have) is not None)
        total += value if ok else 0.0
    return total


def scrape_control(snap: Snapshot) -> list[tuple[str, dict[str, str], float]]:
    """The control plane's samples as Prometheus stores them: with the scrape's `job` label."""
    m = ControlMetrics()
    m.update(snap, [])
    return [
        (s.name, {**s.labels, "job": "flotilla-control"}, s.value)
        for family in m.registry.collect()
        for s in family.samples
    ]


def test_node_counts_count_each_node_once() -> None:
    # Two online nodes, one of them in three pools; one draining node in two; one offline.
    snap = Snapshot(
        nodes=(
            NodeView("a", "online", ("cpu", "nvenc", "qsv")),
            NodeView("b", "online", ("cpu",)),
            NodeView("c", "draining", ("cpu", "nvenc")),
            NodeView("d", "offline", ("nvenc",)),
        )
    )
    scraped = scrape_control(snap)
    (online,) = panel("Nodes online")["targets"]
    assert evaluate_sum(online["expr"], scraped) == 2
    draining, offline = panel("Nodes draining / offline")["targets"]
    assert evaluate_sum(draining["expr"], scraped) == 1
    assert evaluate_sum(offline["expr"], scraped) == 1
    # The per-pool gauge would have said 4 online: what the panel read before.
    per_pool = 'sum(flotilla_nodes{job=~"$control_job", state="online", pool=~"$pool"})'
    assert evaluate_sum(per_pool, scraped) == 4
