"""Prometheus metrics of one daemon, in a private registry so two daemons can share a process."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common.httpserve import HttpServer, Route
from common.procmetrics import identify

log = logging.getLogger("flotilla.metrics")

_DURATION_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 28800)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600)


class Metrics:
    """Labels are pools, outcomes and GPU indexes only: never job ids or paths."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = identify(r, "daemon")
        self.jobs_total = Counter(
            "flotilla_jobs_total", "Jobs finished by outcome", ["outcome", "pool"], registry=r
        )
        self.soft_timeouts = Counter(
            "flotilla_job_soft_timeouts_total",
            "Jobs that ran past their soft timeout",
            ["pool"],
            registry=r,
        )
        self.aged_starts = Counter(
            "flotilla_aged_starts_total",
            "Lower-priority jobs started ahead of higher ones by aging (aging_every)",
            ["pool"],
            registry=r,
        )
        self.share_starts = Counter(
            "flotilla_share_starts_total",
            "Jobs started in a fair-share pool, by tenant (docs/scheduling.md)",
            ["pool", "tenant"],
            registry=r,
        )
        self.disk_low = Gauge(
            "flotilla_disk_low", "1 while free disk is under the watermark (no pulling)", registry=r
        )
        self.jobs_running = Gauge("flotilla_jobs_running", "Jobs running now", registry=r)
        self.slots_free = Gauge("flotilla_slots_free", "Free slots", ["pool"], registry=r)
        self.job_duration = Histogram(
            "flotilla_daemon_job_duration_seconds",
            "Wall time on this node of each job that produced a result",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "flotilla_queue_wait_seconds",
            "Submit to start",
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.realtime_factor = Gauge(
            "flotilla_encode_realtime_factor", "Media seconds per wall second, last job", registry=r
        )
        self.outbox_depth = Gauge("flotilla_outbox_depth", "Unsent events", registry=r)
        self.nats_connected = Gauge("flotilla_nats_connected", "1 when connected", registry=r)
        self.gpu_util = Gauge(
            "flotilla_gpu_utilization_ratio", "GPU utilisation 0..1", ["gpu"], registry=r
        )
        self.gpu_enc_util = Gauge(
            "flotilla_gpu_encoder_utilization_ratio", "NVENC use 0..1", ["gpu"], registry=r
        )
        self._server: HttpServer | None = None

    async def serve(self, host: str, port: int, problems: Callable[[], list[str]] = list) -> int:
        """Serve /metrics, /healthz (the process answers) and /readyz (200 while `problems`
        names none, else 503 with them); port 0 picks a free port. Returns the bound port."""

        async def metrics() -> tuple[int, str, bytes]:
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

        async def healthz() -> tuple[int, str, bytes]:
            return 200, "text/plain", b"ok\n"

        async def readyz() -> tuple[int, str, bytes]:
            found = problems()
            if found:
                return 503, "text/plain", ("not ready: " + "; ".join(found) + "\n").encode()
            return 200, "text/plain", b"ready\n"

        routes: dict[str, Route] = {"/metrics": metrics, "/healthz": healthz, "/readyz": readyz}
        self._server = HttpServer(host, port, routes)
        bound = await self._server.start()
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            await self._server.stop()
            self._server = None
