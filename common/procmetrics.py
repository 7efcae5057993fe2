"""What every Flotilla process exports about itself, whatever its other metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Gauge, ProcessCollector

from common.version import VERSION


def identify(registry: CollectorRegistry, component: str) -> Gauge:
    """`flotilla_build_info{version,component} 1`, and the process_* series (CPU, memory, open
    files, start time) where the platform has /proc; the absent() alert reads the former."""
    ProcessCollector(registry=registry)
    info = Gauge(
        "flotilla_build_info", "Always 1: this process's release", ["version", "component"],
        registry=registry,
    )  # fmt: skip
    info.labels(VERSION, component).set(1)
    return info
