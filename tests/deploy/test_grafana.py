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
    assert {"flotilla_jobs_total", "flotilla_job_duration_seconds_bucket"} <= names
    assert "flotilla_ingest_events_total" in names and "flotilla_ingest_events" not in names
    assert "flotilla_job_duration_seconds" not in names  # a histogram has no bare sample


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
