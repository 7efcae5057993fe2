"""The simulator's reading of the control plane's histograms: the run's share, bucket bounds."""

from __future__ import annotations

import json
import math

from prometheus_client import generate_latest

from control.metrics import Metrics
from control.sim import serverside
from control.sim.report import Report, as_json, percentiles, render


def test_figures_are_the_runs_share_as_bucket_bounds() -> None:
    m = Metrics()
    m.api_request.labels("job.submit").observe(0.3)  # before the run: not its figures
    m.loop_lag.observe(4.0)
    before = serverside.parse(generate_latest(m.registry).decode())
    for _ in range(90):
        m.api_request.labels("job.submit").observe(0.004)
    for _ in range(9):
        m.api_request.labels("job.submit").observe(0.03)
    m.api_request.labels("job.submit").observe(0.3)
    m.api_request.labels("job.get").observe(0.0015)
    for _ in range(99):
        m.loop_lag.observe(0.0005)
    m.loop_lag.observe(7.0)  # past the last bucket
    m.gc_pause.labels("2").observe(0.04)
    after = serverside.parse(generate_latest(m.registry).decode())
    gc = serverside.by_label(before, after, serverside.GC, "generation")
    assert gc == {"2": {"n": 1, "p50": 0.05, "p95": 0.05, "p99": 0.05}}

    api, lag = serverside.figures(before, after)
    assert api["job.submit"] == {"n": 100, "p50": 0.005, "p95": 0.05, "p99": 0.05}
    assert api["job.get"] == {"n": 1, "p50": 0.002, "p95": 0.002, "p99": 0.002}
    assert lag is not None and lag["n"] == 100 and lag["p99"] == 0.001

    m.loop_lag.observe(9.0)
    m.loop_lag.observe(9.0)
    _, lag = serverside.figures(before, serverside.parse(generate_latest(m.registry).decode()))
    assert lag is not None and math.isinf(lag["p99"])

    report = Report("t", 1, {"cpu": 1}, 1, 0, server_api=api, loop_lag=lag, gc_pauses=gc)
    assert "the control plane's own answer times" in render(report)
    assert "generation-2 passes" in render(report)
    doc = json.loads(json.dumps(as_json(report), allow_nan=False))  # no Infinity in the JSON
    assert doc["loop_lag"]["p99"] is None and doc["server_api"]["job.submit"]["p95"] == 0.05


def test_no_requests_in_the_run_gives_no_figures() -> None:
    m = Metrics()
    m.api_request.labels("job.get").observe(0.01)
    text = serverside.parse(generate_latest(m.registry).decode())
    assert serverside.figures(text, text) == ({}, None)


def test_the_client_figures_name_the_lag_of_the_loop_they_were_timed_on() -> None:
    report = Report("t", 1, {"cpu": 1}, 1, 0, api={"submit": percentiles([0.01] * 20)})
    assert "timed on a loop" not in render(report)  # not measured: not claimed
    report.driver_loop_lag = percentiles([0.0002] * 19 + [0.04])
    assert "timed on a loop whose own lag was 0.2 / 40.0 / 40.0  (n=20)" in render(report)
    assert json.loads(json.dumps(as_json(report)))["driver_loop_lag"]["p95"] == 0.04
