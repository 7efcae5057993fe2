"""JetStream topology in one place: streams, consumers and the node bucket, created idempotently.

`ensure_topology` is what `flotilla nats init`, the control plane and the dev stack run at
start-up. Re-running it on a compatible topology changes nothing; a field that differs and that
the server cannot update is reported as a `TopologyError` naming the object and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    PersistMode,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
    SubjectTransform,
)
from nats.js.errors import BucketNotFoundError, NotFoundError

from schemas.common import PRIORITIES, Token
from schemas.subjects import LANE_MARK, SHARES_METADATA, Lane, Subjects, encode_shares

DEFAULT_POOLS = ("cpu", "nvenc", "qsv", "vaapi")


#: The control plane's canary jobs' tenant (control.alerts.canary): it needs a lane in every pool.
CANARY_TENANT = "canary"
Weight = Annotated[float, msgspec.Meta(gt=0, le=1_000_000)]


class TopologySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Replicas of the streams and the node bucket: 1 on one server, 3 on a three-server cluster.
    replicas: int = 1
    #: Pools whose job consumers are created up front and whose queues the control plane watches.
    pools: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_POOLS))
    #: Dedup window for job ids: a re-submit inside it is stored once.
    job_dedup_window: float = 24 * 3600.0
    #: Jobs the jobs stream holds at most; when full, new jobs are refused (discard new).
    job_max_msgs: int = 1_000_000
    #: Bytes the jobs stream holds at most; when full, new jobs are refused.
    job_max_bytes: int = 1 << 30
    #: Seconds events are kept in the events stream.
    events_max_age: float = 14 * 86400.0
    #: Dedup window for event ids (events and dead letters): a replay inside it is stored once.
    events_dedup_window: float = 2 * 3600.0
    #: Seconds dead letters and captured advisories are kept.
    dead_letter_max_age: float = 30 * 86400.0
    #: Consumer ack wait; daemons send in-progress acks at a quarter of it. A node cut off from
    #: NATS for less than this (minus one keep-alive interval) loses its jobs to nobody; one down
    #: longer (power lost, not restarted) has its jobs redelivered after it.
    ack_wait: float = 120.0
    #: Global ceiling for crash loops; per-job attempts are the daemon's decision.
    max_deliver: int = 20
    #: Fixed at creation by the server: sized for the largest fleet.
    max_waiting: int = 4096
    #: Node bucket TTL: a node entry with no heartbeat for this long expires.
    node_ttl: float = 30.0
    #: Seconds a job's failed-run count is kept after its last failure (the `<prefix>_failures`
    #: bucket, what `max_attempts` counts). A job retried later than this counts from zero again.
    failure_count_ttl: float = 7 * 86400.0
    #: Seconds objects in the `<prefix>_media` object store (uploads, nats-obj:// outputs) are
    #: kept; 0 keeps them until deleted. Set on creation only.
    media_ttl: float = 0.0
    #: Bytes the media object store holds at most; -1: no limit. Set on creation only.
    media_max_bytes: int = -1
    #: Tenants that get their own object store `<prefix>_media_<tenant>` (same TTL and size
    #: limit), for the NATS role's per-tenant bucket rights and the daemons' `media.tenant_buckets`.
    media_tenants: list[Token] = []
    #: Leave roll-ups on for media buckets that have them. Only while upgrading: older daemons
    #: and CLIs upload with the client's stock put, which needs them; but anyone who may write
    #: objects can then wipe a bucket with one roll-up message. Unset it once all are upgraded.
    media_allow_rollups: bool = False
    #: Fair-share pools: `{pool: {tenant: weight}}`. Such a pool is pulled through one consumer
    #: per tenant and priority, and each node starts the next job from the tenant furthest
    #: below its weight (docs/scheduling.md); only the tenants named may submit to it (the
    #: canary tenant is added with weight 1). Change a pool's tenants with its queue empty.
    shares: dict[Token, dict[Token, Weight]] = {}

    def __post_init__(self) -> None:
        for pool, weights in self.shares.items():
            if pool not in self.pools:
                raise ValueError(f"shares name pool {pool!r}, which is not in topology.pools")
            if not weights:
                raise ValueError(f"shares of pool {pool!r} name no tenant")
            weights.setdefault(CANARY_TENANT, 1.0)

    def subjects(self, subjects: Subjects) -> Subjects:
        """`subjects` with these settings' shares: what names the lanes."""
        return replace(subjects, shares=self.shares)


class TopologyError(Exception):
    """The topology on the server is incompatible with what this build needs."""


@dataclass
class TopologyReport:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    #: What works as it is but could be better, and how to get there.
    advice: list[str] = field(default_factory=list)


def jobs_stream_config(subjects: Subjects, s: TopologySettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.jobs_stream,
        description="Flotilla jobs, work queue",
        subjects=[
            sub
            for p in s.pools
            for prio in PRIORITIES
            for sub in (*subjects.captured_submits(p, prio), *subjects.captured_timed(p, prio))
        ]
        + [subjects.due_captured(p) for p in s.pools],
        subject_transform=SubjectTransform(
            src=subjects.submit_wildcard, dest=subjects.jobs_transform
        ),
        retention=RetentionPolicy.WORK_QUEUE,
        # New jobs are refused when full, so producers see backpressure instead of silent loss.
        discard=DiscardPolicy.NEW,
        max_msgs=s.job_max_msgs,
        max_bytes=s.job_max_bytes,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        duplicate_window=s.job_dedup_window,
        metadata={SHARES_METADATA: encode_shares(subjects.shares)},
    )


def events_stream_config(subjects: Subjects, s: TopologySettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.events_stream,
        description="Flotilla node and job events",
        subjects=[subjects.events_wildcard],
        retention=RetentionPolicy.LIMITS,
        max_age=s.events_max_age,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        duplicate_window=s.events_dedup_window,
    )


def dead_letter_stream_config(subjects: Subjects, s: TopologySettings) -> StreamConfig:
    return StreamConfig(
        name=subjects.dead_letter_stream,
        description="Jobs that exhausted their deliveries or were terminated",
        subjects=[f"{subjects.prefix}.dlq.>"],
        retention=RetentionPolicy.LIMITS,
        max_age=s.dead_letter_max_age,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        duplicate_window=s.events_dedup_window,
    )


def advisories_stream_config(subjects: Subjects, s: TopologySettings) -> StreamConfig:
    # Advisories are core NATS messages: captured here, or lost when nobody listens.
    return StreamConfig(
        name=subjects.advisories_stream,
        description="Max-deliveries and terminated advisories of the jobs stream",
        subjects=subjects.advisory_subjects(),
        retention=RetentionPolicy.LIMITS,
        max_age=s.dead_letter_max_age,
        storage=StorageType.FILE,
        num_replicas=s.replicas,
        duplicate_window=120.0,
    )


def job_consumer_config(
    subjects: Subjects, s: TopologySettings, pool: str, priority: str, lane: Lane | None = None
) -> ConsumerConfig:
    lane = lane or Lane(subjects.consumer(pool, priority), subjects.jobs_filter(pool, priority))
    meta = {"flotilla.pool": pool, "flotilla.priority": priority}
    if lane.tenant is not None:
        meta["flotilla.tenant"] = lane.tenant
    if lane.due:
        meta["flotilla.lane"] = "due"
    return ConsumerConfig(
        durable_name=lane.consumer,
        filter_subject=lane.filter,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=s.ack_wait,
        max_deliver=s.max_deliver,
        max_ack_pending=-1,
        max_waiting=s.max_waiting,
        metadata=meta,
    )


def ingest_consumer_config(subjects: Subjects, s: TopologySettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.ingest_consumer,
        filter_subject=subjects.events_wildcard,
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=60.0,
        max_deliver=-1,
        max_ack_pending=20_000,
        max_waiting=512,
    )


def advisories_consumer_config(s: TopologySettings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name="control-advisories",
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=60.0,
        max_deliver=-1,
        max_waiting=512,
    )


_STREAM_FIELDS = (
    "subjects",
    "retention",
    "discard",
    "max_msgs",
    "max_bytes",
    "max_age",
    "storage",
    "num_replicas",
    "duplicate_window",
)
_CONSUMER_FIELDS = (
    "filter_subject",
    "ack_policy",
    "ack_wait",
    "max_deliver",
    "max_ack_pending",
    "max_waiting",
)
_FIXED_CONSUMER_FIELDS = frozenset({"max_waiting", "filter_subject", "ack_policy"})
_FIXED_STREAM_FIELDS = frozenset({"retention", "storage"})


def _norm(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    return value


def _diff(want: Any, have: Any, fields: tuple[str, ...]) -> list[str]:
    # Only the fields this build sets: None means "server default" and is not compared.
    return [
        f
        for f in fields
        if getattr(want, f) is not None and _norm(getattr(want, f)) != _norm(getattr(have, f))
    ]


async def _info_or_create(
    js: JetStreamContext, cfg: StreamConfig, name: str, report: TopologyReport
) -> StreamInfo | None:
    """The stream's info, or None once it has been created as `cfg` says."""
    try:
        return await js.stream_info(str(cfg.name))
    except NotFoundError:
        await js.add_stream(cfg)
        report.created.append(name)
        return None


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig, report: TopologyReport) -> None:
    name = f"stream {cfg.name}"
    info = await _info_or_create(js, cfg, name, report)
    if info is None:
        return
    changed = _diff(cfg, info.config, _STREAM_FIELDS)
    want_tr, have_tr = cfg.subject_transform, info.config.subject_transform
    if (want_tr and want_tr.dest) != (have_tr and have_tr.dest):
        changed.append("subject_transform")
    # Only our keys: the server adds its own (its version, the API level) to every stream's.
    have_meta = info.config.metadata or {}
    if any(have_meta.get(k) != v for k, v in (cfg.metadata or {}).items()):
        changed.append("metadata")
        cfg = replace(cfg, metadata={**have_meta, **(cfg.metadata or {})})
    if not changed:
        report.unchanged.append(name)
        return
    fixed = [f for f in changed if f in _FIXED_STREAM_FIELDS]
    if fixed:
        raise TopologyError(f"{name}: {', '.join(fixed)} differ and cannot be changed in place")
    try:
        await js.update_stream(cfg)
    except Exception as exc:
        raise TopologyError(f"{name}: cannot update {', '.join(changed)}: {exc}") from exc
    report.updated.append(f"{name} ({', '.join(changed)})")


async def ensure_consumer(
    js: JetStreamContext, stream: str, cfg: ConsumerConfig, report: TopologyReport
) -> None:
    name = f"consumer {stream}/{cfg.durable_name}"
    try:
        info = await js.consumer_info(stream, str(cfg.durable_name))
    except NotFoundError:
        await js.add_consumer(stream, cfg)
        report.created.append(name)
        return
    changed = _diff(cfg, info.config, _CONSUMER_FIELDS)
    if not changed:
        report.unchanged.append(name)
        return
    fixed = [f for f in changed if f in _FIXED_CONSUMER_FIELDS]
    if fixed:
        raise TopologyError(
            f"{name}: {', '.join(fixed)} differ and cannot be changed; delete the consumer "
            "(when no node is bound) and re-run `flotilla nats init`"
        )
    await js.add_consumer(stream, cfg)
    report.updated.append(f"{name} ({', '.join(changed)})")


async def ensure_kv_bucket(
    js: JetStreamContext, cfg: KeyValueConfig, report: TopologyReport
) -> None:
    """Create the bucket unless it exists (an existing one is left as it is)."""
    name = f"bucket {cfg.bucket}"
    try:
        await js.key_value(cfg.bucket)
        report.unchanged.append(name)
    except BucketNotFoundError:
        await js.create_key_value(cfg)
        report.created.append(name)


def nodes_bucket_stream(subjects: Subjects, s: TopologySettings) -> StreamConfig:
    """The node bucket's stream as nats-py's `create_key_value` lays out a KV bucket (history 1,
    TTL `node_ttl`, limit markers), and on a single replica with `persist_mode: async`.

    Why async: every heartbeat is a put, and with `sync_interval: always` each one is an fsync on
    the disk that job publishes and events wait on (about 180 a second at 1,000 nodes, 5 s
    beats). An entry expires in `node_ttl` anyway; a broker crash loses the last moment of
    beats, and every live node writes its entry again within one heartbeat. The mode cannot be
    changed on an existing stream, and the server takes it on single-replica streams only."""
    bucket = subjects.nodes_bucket
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        allow_rollup_hdrs=True,
        allow_msg_ttl=True,
        deny_delete=True,
        discard=DiscardPolicy.NEW,
        duplicate_window=min(120.0, s.node_ttl),
        max_age=s.node_ttl,
        max_consumers=-1,
        max_msgs=-1,
        max_msgs_per_subject=1,
        num_replicas=s.replicas,
        storage=StorageType.FILE,
        # Expiry visible to watchers (a PURGE marker) instead of silent.
        subject_delete_marker_ttl=1.0,
        persist_mode=PersistMode.ASYNC if s.replicas == 1 else None,
    )


async def ensure_nodes_bucket(
    js: JetStreamContext,
    subjects: Subjects,
    s: TopologySettings,
    report: TopologyReport,
    renew: bool = False,
) -> None:
    """Create the bucket, or with `renew` re-create one whose stream fsyncs every beat. The
    entries go with it: each node writes its own again at its next heartbeat, and until then the
    trackers read it as gone (offline)."""
    cfg = nodes_bucket_stream(subjects, s)
    name = f"bucket {subjects.nodes_bucket}"
    info = await _info_or_create(js, cfg, name, report)
    if info is None:
        return
    if cfg.persist_mode is None or info.config.persist_mode == cfg.persist_mode:
        report.unchanged.append(name)
    elif renew:
        await js.delete_stream(str(cfg.name))
        await js.add_stream(cfg)
        report.updated.append(f"{name} (persist_mode, re-created)")
    else:
        report.unchanged.append(name)
        report.advice.append(
            f"{name} fsyncs every heartbeat (created before persist_mode async); "
            "`flotilla nats init --renew-node-bucket` re-creates it "
            '(docs/operations.md, "The node bucket")'
        )


async def ensure_failures_bucket(
    js: JetStreamContext, subjects: Subjects, s: TopologySettings, report: TopologyReport
) -> None:
    cfg = KeyValueConfig(
        bucket=subjects.failures_bucket, history=1, ttl=s.failure_count_ttl,
        replicas=s.replicas, storage=StorageType.FILE,
        direct=True,  # any replica answers a read
    )  # fmt: skip
    await ensure_kv_bucket(js, cfg, report)


def media_buckets(subjects: Subjects, s: TopologySettings) -> list[str]:
    """The shared media bucket and one per tenant of `media_tenants`."""
    base = subjects.objects_bucket
    return [base, *(f"{base}_{t}" for t in s.media_tenants)]


async def ensure_media_bucket(
    js: JetStreamContext, subjects: Subjects, s: TopologySettings, report: TopologyReport
) -> None:
    """The object stores `flotilla submit --upload` writes and nats-obj:// jobs read and write."""
    for bucket in media_buckets(subjects, s):
        name = f"object store {bucket}"
        try:
            await js.object_store(bucket)
            if not s.media_allow_rollups and await refuse_rollups(js, bucket):
                report.updated.append(f"{name} (allow_rollup_hdrs)")
            else:
                report.unchanged.append(name)
        except BucketNotFoundError:
            # nats-py overwrites config.bucket with the `bucket` argument: pass both.
            await js.create_object_store(
                bucket=bucket,
                config=ObjectStoreConfig(
                    bucket=bucket,
                    description="Flotilla media: uploaded inputs and nats-obj:// outputs",
                    ttl=s.media_ttl or None,
                    max_bytes=s.media_max_bytes,
                    replicas=s.replicas,
                    storage=StorageType.FILE,
                ),
            )
            # nats-py cannot create an object store without roll-ups: turn them off at once.
            await refuse_rollups(js, bucket)
            report.created.append(name)


async def refuse_rollups(js: JetStreamContext, bucket: str) -> bool:
    """Turn roll-up headers off on an object store's stream; True if it was on.

    Anyone who may publish to `$O.<bucket>.>` could otherwise wipe the bucket with one
    `Nats-Rollup: all` message: NATS permissions see subjects, not headers. Flotilla's writers
    (daemon.media.objstore.put_object) need no roll-up.
    """
    info = await js.stream_info(f"OBJ_{bucket}")
    if not info.config.allow_rollup_hdrs:
        return False
    cfg = info.config
    cfg.allow_rollup_hdrs = False
    await js.update_stream(cfg)
    return True


async def ensure_pool_consumers(
    js: JetStreamContext, subjects: Subjects, s: TopologySettings, pools: list[str]
) -> TopologyReport:
    """Each pool's lanes; a lane of the pool's other layout (a pool that became fair-share, a
    tenant whose share was removed) is deleted first, as the work queue refuses consumers whose
    filters overlap, but only while it holds no job: else a TopologyError says to drain it."""
    report = TopologyReport()
    subjects = s.subjects(subjects)
    names = [n async for n in _consumer_names(js, subjects.jobs_stream)]
    for pool in pools:
        for priority in PRIORITIES:
            lanes = subjects.lanes(pool, priority)
            wanted = {lane.consumer for lane in lanes}
            ours = (subjects.consumer(pool, priority), subjects.due_consumer(pool, priority))
            for name in names:
                if name not in wanted and (name in ours or name.startswith(_marked(ours))):
                    await _delete_idle(js, subjects.jobs_stream, name, report)
            for lane in lanes:
                cfg = job_consumer_config(subjects, s, pool, priority, lane)
                await ensure_consumer(js, subjects.jobs_stream, cfg, report)
    return report


def _marked(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(n + LANE_MARK for n in names)


async def _consumer_names(js: JetStreamContext, stream: str) -> Any:
    offset = 0
    while True:
        page = await js.consumers_info(stream, offset)
        for info in page:
            yield info.name
        if not page:
            return
        offset += len(page)


async def _delete_idle(
    js: JetStreamContext, stream: str, name: str, report: TopologyReport
) -> None:
    info = await js.consumer_info(stream, name)
    held = (info.num_pending or 0) + (info.num_ack_pending or 0)
    if held:
        raise TopologyError(
            f"consumer {stream}/{name} still holds {held} job(s) and no longer fits the pool's "
            "shares: drain the pool (let its queue empty) and re-run `flotilla nats init`"
        )
    await js.delete_consumer(stream, name)
    report.updated.append(f"consumer {stream}/{name} (deleted: not a lane of its pool now)")


async def ensure_topology(
    js: JetStreamContext, subjects: Subjects, s: TopologySettings, renew_node_bucket: bool = False
) -> TopologyReport:
    report = TopologyReport()
    subjects = s.subjects(subjects)
    await ensure_stream(js, jobs_stream_config(subjects, s), report)
    await ensure_stream(js, events_stream_config(subjects, s), report)
    await ensure_stream(js, dead_letter_stream_config(subjects, s), report)
    await ensure_stream(js, advisories_stream_config(subjects, s), report)
    pools = await ensure_pool_consumers(js, subjects, s, s.pools)
    report.created += pools.created
    report.updated += pools.updated
    report.unchanged += pools.unchanged
    await ensure_consumer(js, subjects.events_stream, ingest_consumer_config(subjects, s), report)
    await ensure_consumer(js, subjects.advisories_stream, advisories_consumer_config(s), report)
    await ensure_nodes_bucket(js, subjects, s, report, renew_node_bucket)
    await ensure_failures_bucket(js, subjects, s, report)
    await ensure_media_bucket(js, subjects, s, report)
    return report
