"""Subject, stream and consumer names in one place, and the job partition rule.

A producer publishes a job to `<prefix>.submit.<pool>.<priority>.<job_id>` with the job id as
`Nats-Msg-Id`. The jobs stream's subject transform stores it as
`<prefix>.jobs.<pool>.<priority>.<partition>.<job_id>`, where the server computes
`partition = fnv1a32(job_id) % partitions`, so producers never compute it themselves.
Priority lives in the subject because JetStream has none per message: each (pool, priority)
pair has its own durable consumer, and daemons drain higher priorities first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from schemas.common import PRIORITIES

_PREFIX = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
ALL_NODES = "all"


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_of(job_id: str, partitions: int) -> int:
    """The partition the server's `{{partition(n,…)}}` transform gives this job id."""
    return fnv1a32(job_id.encode()) % partitions


def check_token(value: str, what: str) -> str:
    if not _TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a subject-safe token ([A-Za-z0-9_-], 1-128)")
    return value


@dataclass(frozen=True)
class Subjects:
    prefix: str = "flotilla"
    partitions: int = 8

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must match {_PREFIX.pattern}")
        if not 1 <= self.partitions <= 1024:
            raise ValueError("partitions must be between 1 and 1024")

    # -- jobs ---------------------------------------------------------------------------
    def submit(self, pool: str, priority: str, job_id: str) -> str:
        check_token(pool, "pool")
        check_token(job_id, "job id")
        if priority not in PRIORITIES:
            raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
        return f"{self.prefix}.submit.{pool}.{priority}.{job_id}"

    @property
    def submit_wildcard(self) -> str:
        return f"{self.prefix}.submit.*.*.*"

    @property
    def jobs_transform(self) -> str:
        return (
            f"{self.prefix}.jobs.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
            f".{{{{partition({self.partitions},3)}}}}.{{{{wildcard(3)}}}}"
        )

    def job_stored(self, pool: str, priority: str, job_id: str) -> str:
        part = partition_of(job_id, self.partitions)
        return f"{self.prefix}.jobs.{pool}.{priority}.{part}.{job_id}"

    def jobs_filter(self, pool: str, priority: str) -> str:
        return f"{self.prefix}.jobs.{pool}.{priority}.>"

    def consumer(self, pool: str, priority: str) -> str:
        return f"jobs-{pool}-{priority}"

    # -- streams and buckets ------------------------------------------------------------
    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def events_stream(self) -> str:
        return f"{self.prefix.upper()}_EVENTS"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    @property
    def advisories_stream(self) -> str:
        return f"{self.prefix.upper()}_ADVISORIES"

    @property
    def nodes_bucket(self) -> str:
        return f"{self.prefix}_nodes"

    @property
    def objects_bucket(self) -> str:
        return f"{self.prefix}_media"

    @property
    def ingest_consumer(self) -> str:
        return "control-ingest"

    # -- events, control, api, alerts ---------------------------------------------------
    def events(self, node_id: str, kind: str) -> str:
        return f"{self.prefix}.events.{node_id}.{kind}"

    @property
    def events_wildcard(self) -> str:
        return f"{self.prefix}.events.>"

    def dead_letter(self, job_id: str) -> str:
        return f"{self.prefix}.dlq.{job_id}"

    def ctl(self, node_id: str, verb: str) -> str:
        return f"{self.prefix}.ctl.{node_id}.{verb}"

    def api(self, verb: str) -> str:
        return f"{self.prefix}.api.{verb}"

    def alerts(self, severity: str, rule: str) -> str:
        return f"{self.prefix}.alerts.{severity}.{rule}"

    def advisory_subjects(self) -> list[str]:
        stream = self.jobs_stream
        return [
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.*",
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.*",
        ]
