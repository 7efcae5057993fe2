"""Subject, stream and consumer names in one place, and the job partition rule.

A producer publishes a job to `<prefix>.submit.<tenant>.<pool>.<priority>.<job_id>` with
`<tenant>.<job_id>` as `Nats-Msg-Id` (job_msg_id): a job is named by its tenant and its id, so two
tenants may use the same job id. The jobs stream's subject transform stores it as
`<prefix>.jobs.<pool>.<priority>.<partition>.<tenant>.<job_id>`, where the server computes
`partition = fnv1a32(job_id) % partitions`, so producers never compute it themselves.
Priority lives in the subject because JetStream has none per message: each (pool, priority)
pair has its own durable consumer, and daemons drain higher priorities first. The tenant lives
in the subject so NATS permissions can hold a producer to its own tenant
(`<prefix>.submit.<tenant>.>`); a daemon fails a job whose body names another tenant.

That is version 2 of the submit subject (SUBMIT_SUBJECT_VERSION). Version 1 had no tenant token
(`<prefix>.submit.<pool>.<priority>.<job_id>`, stored as
`<prefix>.jobs.<pool>.<priority>.<partition>.<job_id>`): the jobs stream no longer captures it,
and the control plane answers such a publish with an error PubAck (control.submitrefusal).
Jobs stored under the version 1 form before an upgrade are still run, tenant from the body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.common import PRIORITIES

_PREFIX = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
ALL_NODES = "all"
#: The submit subject's version: 2 added the tenant token. Producers of version 1 are refused.
SUBMIT_SUBJECT_VERSION = 2
#: `err_code` of the error PubAck that refuses a version 1 submit (Flotilla's, not the server's).
ERR_SUBMIT_SUBJECT_V1 = 40001


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def partition_of(job_id: str, partitions: int) -> int:
    """The partition the server's `{{partition(n,…)}}` transform gives this job id."""
    return fnv1a32(job_id.encode()) % partitions


def check_token(value: str, what: str) -> str:
    if not TOKEN.match(value):
        raise ValueError(f"{what} {value!r} is not a subject-safe token ([A-Za-z0-9_-], 1-128)")
    return value


def job_msg_id(tenant: str, job_id: str) -> str:
    """A job's `Nats-Msg-Id`: scoped by tenant, so one tenant's id never dedups another's job."""
    return f"{check_token(tenant, 'tenant')}.{check_token(job_id, 'job id')}"


def retry_msg_id(tenant: str, job_id: str, dlq_seq: int) -> str:
    """The `Nats-Msg-Id` of a dead letter's re-submission: its own, so the job's id in the dedup
    window does not swallow it, and still the job's (job_msg_id_fits)."""
    return f"{job_msg_id(tenant, job_id)}.retry.{dlq_seq}"


def job_msg_id_fits(msg_id: str | None, tenant: str, job_id: str) -> bool:
    """Whether a job message's `Nats-Msg-Id` is its own: `<tenant>.<job_id>` or a retry of it.

    NATS dedups on the header alone, stream-wide, whoever set it: a producer that sends another
    tenant's id makes that tenant's own publish of it, within the window, a duplicate. Its job is
    refused for that (daemon.job.run), so a forged id is seen, never run. An absent id (no dedup)
    and one without a dot (a producer of before tenant-scoped ids) name nobody else's job.
    """
    if not msg_id or "." not in msg_id:
        return True
    own = job_msg_id(tenant, job_id)
    return msg_id == own or msg_id.startswith(own + ".")


#: Key of the jobs stream's metadata that holds the fair-share pools' weights (`{pool: {tenant:
#: weight}}` as JSON), which is how daemons learn them: the control plane's topology writes it.
SHARES_METADATA = "flotilla.shares"
#: Between a job consumer's name and the tenant of its lane; never in a token, so unambiguous.
LANE_MARK = "~"

Shares = Mapping[str, Mapping[str, float]]


def encode_shares(shares: Shares) -> str:
    return json.dumps({p: dict(sorted(t.items())) for p, t in sorted(shares.items())})


def decode_shares(text: str | None) -> dict[str, dict[str, float]]:
    """The metadata's weights; ValueError on anything but pools of positive tenant weights."""
    if not text:
        return {}
    raw = json.loads(text)
    if not isinstance(raw, dict):
        raise ValueError("shares must be an object of pools")
    out: dict[str, dict[str, float]] = {}
    for pool, weights in raw.items():
        if not isinstance(weights, dict) or not weights:
            raise ValueError(f"shares of pool {pool!r} must name tenants")
        out[check_token(pool, "pool")] = {
            check_token(t, "tenant"): _weight(w) for t, w in weights.items()
        }
    return out


def _weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"share weight {value!r} must be a number above 0")
    return float(value)


@dataclass(frozen=True, slots=True)
class Lane:
    """One durable consumer of a pool and priority: the whole tier, or in a fair-share pool one
    tenant's part of it (`tenant` set)."""

    consumer: str
    filter: str
    tenant: str | None = None
    #: A due lane: deadline jobs the leader released in deadline order (docs/deadlines.md),
    #: pulled before the tier's other lanes.
    due: bool = False


@dataclass(frozen=True)
class StoredJob:
    """A job message's place in the jobs stream, read from its stored subject."""

    pool: str
    priority: str
    partition: int
    #: None for a job stored under the version 1 submit subject: its body names the tenant.
    tenant: str | None
    job_id: str


def parse_stored(subject: str) -> StoredJob:
    """`<prefix>.jobs.<pool>.<priority>.<partition>[.<tenant>].<job_id>`, or a due lane's
    `<prefix>.due.<pool>.<priority>.<partition>.<tenant>.<job_id>`; ValueError otherwise."""
    tokens = subject.split(".")
    if tokens[1:2] == ["due"] and len(tokens) != 7:
        raise ValueError(f"{subject!r} is not a stored job subject")
    if len(tokens) not in (6, 7) or tokens[1] not in ("jobs", "due") or not tokens[4].isdigit():
        raise ValueError(f"{subject!r} is not a stored job subject")
    tenant = tokens[5] if len(tokens) == 7 else None
    return StoredJob(tokens[2], tokens[3], int(tokens[4]), tenant, tokens[-1])


@dataclass(frozen=True)
class HeldJob:
    """A deadline job waiting for the leader's release, read from its held subject."""

    tenant: str
    pool: str
    priority: str
    job_id: str


def parse_held(subject: str) -> HeldJob:
    """`<prefix>.timed.<tenant>.<pool>.<priority>.<job_id>`; ValueError otherwise."""
    tokens = subject.split(".")
    if len(tokens) != 6 or tokens[1] != "timed" or tokens[4] not in PRIORITIES:
        raise ValueError(f"{subject!r} is not a held job subject")
    return HeldJob(tokens[2], tokens[3], tokens[4], tokens[5])


@dataclass(frozen=True)
class Subjects:
    prefix: str = "flotilla"
    partitions: int = 8
    #: Fair-share pools: tenant weights per pool (docs/scheduling.md). Such a pool's jobs are
    #: pulled through one consumer per tenant and priority (`lanes`), not one per priority.
    shares: Shares = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must match {_PREFIX.pattern}")
        if not 1 <= self.partitions <= 1024:
            raise ValueError("partitions must be between 1 and 1024")

    # -- jobs ---------------------------------------------------------------------------
    def submit(self, tenant: str, pool: str, priority: str, job_id: str) -> str:
        check_token(tenant, "tenant")
        check_token(pool, "pool")
        check_token(job_id, "job id")
        if priority not in PRIORITIES:
            raise ValueError(f"priority {priority!r} is not one of {', '.join(PRIORITIES)}")
        return f"{self.prefix}.submit.{tenant}.{pool}.{priority}.{job_id}"

    def timed(self, tenant: str, pool: str, priority: str, job_id: str) -> str:
        """Where a job with a deadline is submitted to run earliest deadline first: the jobs
        stream keeps it there, untransformed, and no node pulls it; the control plane's leader
        releases it into the tier's due lane in deadline order (docs/deadlines.md)."""
        self.submit(tenant, pool, priority, job_id)  # the same checks
        return self.held_stored(tenant, pool, priority, job_id)

    def held_stored(self, tenant: str, pool: str, priority: str, job_id: str) -> str:
        """Where the stream keeps a held job; `tenant` may be `*` to match any (a look-up)."""
        return f"{self.prefix}.timed.{tenant}.{pool}.{priority}.{job_id}"

    @property
    def timed_wildcard(self) -> str:
        return f"{self.prefix}.timed.*.*.*.*"

    def captured_timed(self, pool: str, priority: str) -> list[str]:
        """captured_submits' patterns for the held form: the same pools, priorities, tenants."""
        n = len(f"{self.prefix}.submit.")
        return [f"{self.prefix}.timed.{p[n:]}" for p in self.captured_submits(pool, priority)]

    def due_stored(self, tenant: str, pool: str, priority: str, job_id: str) -> str:
        """Where the leader releases a held job: its tier's due lane. Only the control plane
        may publish here (a producer's permissions stop at `submit` and `timed`)."""
        part = partition_of(job_id, self.partitions)
        return f"{self.prefix}.due.{pool}.{priority}.{part}.{tenant}.{job_id}"

    def due_captured(self, pool: str) -> str:
        return f"{self.prefix}.due.{check_token(pool, 'pool')}.>"

    def due_consumer(self, pool: str, priority: str) -> str:
        return f"due-{pool}-{priority}"

    @property
    def submit_wildcard(self) -> str:
        return f"{self.prefix}.submit.*.*.*.*"

    def pool_priority_submits(self, pool: str, priority: str) -> str:
        """What the jobs stream captures: one pattern per served pool and priority, so a job for
        a pool or priority nothing serves is refused at publish, never stored undeliverable."""
        return f"{self.prefix}.submit.*.{check_token(pool, 'pool')}.{priority}.*"

    def captured_submits(self, pool: str, priority: str) -> list[str]:
        """pool_priority_submits, or in a fair-share pool one pattern per tenant with a share:
        another tenant's job there is refused at publish, since no lane would ever pull it."""
        weights = self.shares.get(pool)
        if not weights:
            return [self.pool_priority_submits(pool, priority)]
        check_token(pool, "pool")
        return [f"{self.prefix}.submit.{t}.{pool}.{priority}.*" for t in sorted(weights)]

    @property
    def strays(self) -> str:
        """Messages the jobs stream stored untransformed (a wildcard character as a token)."""
        return f"{self.prefix}.submit.>"

    @property
    def submit_v1_wildcard(self) -> str:
        """The version 1 form: three tokens after `submit`, so it never matches version 2."""
        return f"{self.prefix}.submit.*.*.*"

    def pool_submits(self, pool: str) -> str:
        """Every submit to `pool`, whatever the tenant: the daemons' wake-up subscription."""
        return f"{self.prefix}.submit.*.{pool}.>"

    def tenant_submits(self, tenant: str) -> str:
        """Every submit of `tenant`: what a producer of that tenant may publish to."""
        return f"{self.prefix}.submit.{check_token(tenant, 'tenant')}.>"

    @property
    def jobs_transform(self) -> str:
        # Wildcards of submit_wildcard: 1 tenant, 2 pool, 3 priority, 4 job id. The partition
        # hashes the job id token alone, as partition_of does.
        return (
            f"{self.prefix}.jobs.{{{{wildcard(2)}}}}.{{{{wildcard(3)}}}}"
            f".{{{{partition({self.partitions},4)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(4)}}}}"
        )

    def job_stored(self, tenant: str, pool: str, priority: str, job_id: str) -> str:
        """Where the stream keeps the job; `tenant` may be `*` to match any (a look-up)."""
        part = partition_of(job_id, self.partitions)
        return f"{self.prefix}.jobs.{pool}.{priority}.{part}.{tenant}.{job_id}"

    def job_stored_v1(self, pool: str, priority: str, job_id: str) -> str:
        """Where a job submitted under the version 1 subject was kept (before the upgrade)."""
        part = partition_of(job_id, self.partitions)
        return f"{self.prefix}.jobs.{pool}.{priority}.{part}.{job_id}"

    def jobs_filter(self, pool: str, priority: str) -> str:
        return f"{self.prefix}.jobs.{pool}.{priority}.>"

    def consumer(self, pool: str, priority: str) -> str:
        return f"jobs-{pool}-{priority}"

    def lane_consumer(self, pool: str, priority: str, tenant: str) -> str:
        return f"{self.consumer(pool, priority)}{LANE_MARK}{check_token(tenant, 'tenant')}"

    def lanes(self, pool: str, priority: str) -> list[Lane]:
        """The consumers that hold the pool's jobs of this priority: the due lane first, then
        the submitted jobs' lane; in a fair-share pool, that pair per tenant."""
        weights = self.shares.get(pool)
        due = f"{self.prefix}.due.{pool}.{priority}"
        if not weights:
            return [
                Lane(self.due_consumer(pool, priority), f"{due}.>", due=True),
                Lane(self.consumer(pool, priority), self.jobs_filter(pool, priority)),
            ]
        part = f"{self.prefix}.jobs.{pool}.{priority}.*"
        due_mark = f"{self.due_consumer(pool, priority)}{LANE_MARK}"
        return [
            lane
            for t in sorted(weights)
            for lane in (
                Lane(f"{due_mark}{t}", f"{due}.*.{t}.*", t, due=True),
                Lane(self.lane_consumer(pool, priority, t), f"{part}.{t}.*", t),
            )
        ]

    def lane(
        self, pool: str, priority: str, tenant: str | None, *, due: bool = False
    ) -> Lane | None:
        """The lane holding a job of `tenant` (None: the tenant has no share in a fair pool)."""
        for lane in self.lanes(pool, priority):
            if lane.due == due and (lane.tenant is None or lane.tenant == tenant):
                return lane
        return None

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
    def failures_bucket(self) -> str:
        """Failed runs per job (`<tenant>.<job_id>`): what a job's `max_attempts` counts."""
        return f"{self.prefix}_failures"

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

    def job_updates(self, tenant: str, job_id: str, kind: str = "*") -> str:
        """Live copies of one job's events, published by the control plane once stored (core
        NATS, not kept): what `flotilla watch` follows, and a producer may read for its own
        tenant (`<prefix>.updates.<tenant>.>`) without seeing the fleet's events."""
        return f"{self.prefix}.updates.{tenant or '_'}.{job_id}.{kind}"

    @property
    def workflow_kick(self) -> str:
        """Core NATS, control plane only: a workflow was submitted, the leader should look now
        rather than at its next sweep (a lost kick costs one sweep interval)."""
        return f"{self.prefix}.control.workflows"

    def dead_letter(self, tenant: str, job_id: str) -> str:
        # "": a stray message whose tenant token is not one (control.deadletters.strays).
        return f"{self.prefix}.dlq.{tenant or '_'}.{job_id}"

    def dead_letter_v1(self, job_id: str) -> str:
        """Where a dead letter was kept before job ids were per tenant (its tenant: the body's)."""
        return f"{self.prefix}.dlq.{job_id}"

    def job_end(self, node_id: str) -> str:
        """A node asks the control plane whether a redelivered job already ended elsewhere
        (schemas.jobend); a node may publish only its own."""
        return f"{self.prefix}.jobend.{node_id}"

    @property
    def job_end_wildcard(self) -> str:
        return f"{self.prefix}.jobend.*"

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
