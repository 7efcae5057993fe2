"""What the control plane measured of itself during a run: its API answer times by verb and its
event loop's lag, from two scrapes of its /metrics histograms (the run is their difference).

A histogram keeps counts per bucket, so a quantile is known only to within its bucket: each one
here is the bucket's upper bound ("at most"), never an interpolation.
"""

from __future__ import annotations

import asyncio
import math
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families

API = "flotilla_api_request_seconds"
LAG = "flotilla_control_loop_lag_seconds"
GC = "flotilla_control_gc_pause_seconds"
QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
#: Series name -> (labels) -> cumulative count per upper bound.
Buckets = dict[str, dict[tuple[tuple[str, str], ...], dict[float, float]]]


def parse(text: str) -> Buckets:
    out: Buckets = defaultdict(lambda: defaultdict(dict))
    for family in text_string_to_metric_families(text):
        if family.name not in (API, LAG, GC):
            continue
        for s in family.samples:
            if not s.name.endswith("_bucket"):
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            out[family.name][labels][float(s.labels["le"])] = s.value
    return out


def quantiles(before: dict[float, float], after: dict[float, float]) -> dict[str, float] | None:
    """{n, p50, p95, p99}: each the upper bound of the bucket it falls in (inf past the last)."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None
    out = {"n": total}
    for name, q in QUANTILES.items():
        want = q * total
        out[name] = next((b for b, c in zip(bounds, counts, strict=True) if c >= want), math.inf)
    return out


def by_label(before: Buckets, after: Buckets, name: str, label: str) -> dict[str, dict[str, float]]:
    """The run's figures of one histogram, by the value of `label`."""
    out: dict[str, dict[str, float]] = {}
    for labels, counts in after.get(name, {}).items():
        q = quantiles(before.get(name, {}).get(labels, {}), counts)
        if q is not None:
            out[dict(labels).get(label, "?")] = q
    return out


def figures(
    before: Buckets, after: Buckets
) -> tuple[dict[str, dict[str, float]], dict[str, float] | None]:
    """The run's API figures by verb and its loop-lag figures."""
    lag_after = after.get(LAG, {}).get((), {})
    lag = quantiles(before.get(LAG, {}).get((), {}), lag_after) if lag_after else None
    return by_label(before, after, API, "verb"), lag


async def scrape(port: int) -> Buckets:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            return str(r.read().decode())

    return parse(await asyncio.to_thread(get))
