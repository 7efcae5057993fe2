"""The shipped Prometheus rules and scrape configuration, checked and unit-tested by promtool.

`promtool test rules` runs control/prometheus/tests/; the series those tests feed in must be
ones the real exporters export (control.metrics / daemon.metrics, fed the same values), with the
`job` and `instance` a scrape adds, so a renamed metric or label fails here and not in
production. `up` is Prometheus's own series. `make install` puts promtool in the venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from control.alerts.rules import RULES, NodeView, PoolView, Snapshot
from control.metrics import Metrics
from daemon.metrics import Metrics as DaemonMetrics
from schemas.alerts import Alert

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "control" / "prometheus"
RULES_FILE = PROM / "flotilla-rules.yml"
SCRAPE_FILE = PROM / "prometheus.yml"
UNIT_TESTS = sorted((PROM / "tests").glob("*.test.yml"))
OPERATIONS = ROOT / "docs" / "operations.md"
SERIES = re.compile(r"^(\w+)\{(.*)\}$")
LABEL = re.compile(r'(\w+)="([^"]*)"')
JOBS = {"flotilla-control": "control", "flotilla-daemon": "daemon"}

Labels = dict[str, str]


def promtool(*args: str | Path, cwd: Path = PROM) -> str:
    """promtool's output; the test fails with it when promtool does."""
    here = Path(sys.executable).parent
    exe = shutil.which("promtool", path=f"{here}{os.pathsep}{os.environ.get('PATH', '')}")
    assert exe, "promtool not found: `make install` puts it in the venv"
    done = subprocess.run(
        [exe, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"promtool {' '.join(map(str, args))}:\n{out}"
    return out


def rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"]}


def unit_tests() -> list[dict[str, Any]]:
    return [t for f in UNIT_TESTS for t in yaml.safe_load(f.read_text())["tests"]]


def slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    assert UNIT_TESTS, "no promtool unit tests under control/prometheus/tests"
    assert f"SUCCESS: {len(rules())} rules found" in promtool("check", "rules", RULES_FILE)
    promtool("test", "rules", *UNIT_TESTS)


def test_every_rule_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in unit_tests():
        for check in case["alert_rule_test"]:
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == set(rules()), f"no firing case for {set(rules()) - firing}"
    assert quiet == set(rules()), f"no quiet case for {set(rules()) - quiet}"
    # Every expected alert names its runbook and summary: promtool compares them exactly.
    for case in unit_tests():
        for check in case["alert_rule_test"]:
            for alert in check.get("exp_alerts") or []:
                assert set(alert["exp_annotations"]) == {"summary", "runbook_url"}, check


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


def exposed(registry: CollectorRegistry) -> list[tuple[str, Labels]]:
    text = generate_latest(registry).decode()
    return [
        (s.name, dict(s.labels)) for f in text_string_to_metric_families(text) for s in f.samples
    ]


def input_series() -> list[tuple[str, Labels]]:
    found = []
    for case in unit_tests():
        for s in case["input_series"]:
            match = SERIES.match(s["series"])
            assert match, f"not name{{labels}}: {s['series']}"
            found.append((match.group(1), dict(LABEL.findall(match.group(2)))))
    return found


def control_exports(series: list[tuple[str, Labels]]) -> list[tuple[str, Labels]]:
    """The real control plane's registry fed the nodes, pools and alerts the tests name."""
    nodes = {(lb["state"], lb["pool"]) for n, lb in series if n == "flotilla_nodes"}
    pools = {lb["pool"] for n, lb in series if n.startswith("flotilla_queue_")}
    alerts = [
        Alert(alert_id=lb["rule"], rule=lb["rule"], severity=RULES[lb["rule"]][1],
              state="firing", subject="x", summary="x", fired_at=0.0)
        for n, lb in series if n == "flotilla_alerts_firing" and lb["rule"] in RULES
    ]  # fmt: skip
    snap = Snapshot(
        nodes=tuple(NodeView(f"{s}-{p}", s, (p,)) for s, p in sorted(nodes)),
        pools=tuple(PoolView(p, 1, 1.0) for p in sorted(pools)),
    )
    m = Metrics()
    m.update(snap, alerts)
    return exposed(m.registry)


def test_input_series_are_what_the_exporters_export() -> None:
    series = input_series()
    exports = {
        "flotilla-control": control_exports(series),
        "flotilla-daemon": exposed(DaemonMetrics().registry),
    }
    for name, labels in series:
        text = f"{name}{labels}"
        # The labels a scrape adds, for the jobs of the shipped scrape configuration.
        assert labels.get("job") in JOBS and labels.get("instance"), text
        own = {k: v for k, v in labels.items() if k not in ("job", "instance")}
        if name == "up":  # Prometheus's own: target labels only
            assert not own, text
            continue
        if name == "flotilla_build_info":
            assert own.pop("component") == JOBS[labels["job"]], text
            assert own.pop("version"), text
        real = [lb for n, lb in exports[labels["job"]] if n == name]
        assert real, f"{text}: {labels['job']} exports no {name}"
        if name == "flotilla_build_info":
            real = [
                {k: v for k, v in lb.items() if k not in ("component", "version")} for lb in real
            ]
        assert own in real, f"{text}: exported as {real}"


def test_build_info_names_each_component() -> None:
    info = [
        lb for reg in (Metrics().registry, DaemonMetrics().registry)
        for n, lb in exposed(reg) if n == "flotilla_build_info"
    ]  # fmt: skip
    assert sorted(lb["component"] for lb in info) == ["control", "daemon"]
    assert all(lb["version"] for lb in info)
    # The process collector on each registry, where the platform has /proc (Linux).
    names = {n for n, _ in exposed(DaemonMetrics().registry)}
    assert ("process_cpu_seconds_total" in names) == Path("/proc/self/stat").exists()


def documented_scrape_config() -> str:
    text = OPERATIONS.read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "scrape_configs:" in b]
    assert len(found) == 1, "docs/operations.md shows one scrape configuration"
    return str(found[0])


def test_shipped_scrape_config_is_valid_and_documented() -> None:
    out = promtool("check", "config", SCRAPE_FILE)
    assert "SUCCESS: 1 rule files found" in out
    shipped = "".join(
        line for line in SCRAPE_FILE.read_text().splitlines(keepends=True)
        if not line.startswith("#")
    )  # fmt: skip
    assert documented_scrape_config() == shipped


def test_relabelling_keeps_every_daemon_apart(tmp_path: Path) -> None:
    """The shipped relabelling on real addresses: node ids for host names on the default port,
    host:port for anything else, so two daemons on one address never share `instance`."""
    cfg = yaml.safe_load(SCRAPE_FILE.read_text())
    cfg.pop("rule_files")
    targets = {
        "gpu-01.example:9464": "gpu-01",
        "gpu-02:9464": "gpu-02",
        "127.0.0.1:9464": "127.0.0.1:9464",
        "127.0.0.1:9466": "127.0.0.1:9466",
        "10.0.0.7:9464": "10.0.0.7:9464",
        "gpu-01.example:9470": "gpu-01.example:9470",
        "[::1]:9464": "[::1]:9464",
    }
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "flotilla-daemon"]
    job["static_configs"] = [{"targets": list(targets)}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    # promtool collects what discovery sends for the whole timeout; static targets come at once.
    sd = promtool("check", "service-discovery", "--timeout=10s", path, "flotilla-daemon")
    found = json.loads(sd)
    got = {t["discoveredLabels"]["__address__"]: t["labels"]["instance"] for t in found}
    assert got == targets
