"""The daemon's configuration (`/etc/flotilla/daemon.toml`), typed and strict."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from common.configfile import load_config
from common.natsconn import NatsSettings
from schemas.windows import MAX_WINDOWS, WindowRule

DEFAULT_PATH = Path("/etc/flotilla/daemon.toml")
ENV_PREFIX = "FLOTILLA_DAEMON_"
Positive = Annotated[float, msgspec.Meta(gt=0)]
PoolClass = Literal["cpu", "nvenc", "qsv", "vaapi"]


def _default_node_id() -> str:
    host = socket.gethostname().split(".")[0].lower()
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in host).strip("-_")
    return cleaned[:63] or "node"


#: Demuxers a media input may be read with (ffmpeg's `-format_whitelist`): playlists (hls,
#: concat), devices and generators (lavfi) are left out because they open other files or never end.
DEFAULT_DEMUXERS = [
    "mov", "matroska", "mpegts", "mxf", "avi", "flv", "mpeg", "ogg", "wav", "mp3", "aac",
    "flac", "ivf", "h264", "hevc", "yuv4mpegpipe",
]  # fmt: skip


class S3Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Buckets s3:// URIs may name (inputs and outputs); empty: s3:// is off on this node.
    buckets: list[str] = []
    #: S3-compatible endpoint (MinIO, Ceph, R2, ...), e.g. `https://minio.example:9000`;
    #: unset: AWS (or `AWS_ENDPOINT_URL` from the environment).
    endpoint_url: str | None = None
    #: Region requests are signed for; unset: `AWS_REGION`/`AWS_DEFAULT_REGION`, else us-east-1.
    region: str | None = None
    #: Access key id; unset: the environment (`AWS_ACCESS_KEY_ID`, web identity, container
    #: credentials), else the instance profile. Never taken from a job.
    access_key_id: str | None = None
    #: File holding the secret access key (with `access_key_id`); keep it readable by the
    #: daemon's user only.
    secret_access_key_file: str | None = None
    #: Address buckets as `<bucket>.<host>` (AWS's preferred style); false: `<host>/<bucket>`,
    #: which most S3-compatible servers need.
    virtual_hosted_style: bool = False
    #: Allow plain http:// to the endpoint and for signed-URL outputs (a test server, or a
    #: network you trust: the credentials' signatures and the data travel in the clear).
    allow_http: bool = False
    #: Multipart part size in bytes for uploads; files larger than one part go up in parts.
    #: S3 wants parts of at least 5 MiB (all but the last); less is for test servers only.
    part_size: Annotated[int, msgspec.Meta(ge=1024)] = 16 << 20
    #: Parts of one upload sent at once.
    max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    #: Retries of a failed request (5xx, connection errors, timeouts), with backoff.
    retries: Annotated[int, msgspec.Meta(ge=0, le=20)] = 5
    #: Ask the server to verify an SHA-256 checksum of every upload (and part).
    checksums: bool = True
    #: Hosts (exact names, lowercase) that signed-URL outputs (`https://` with a presigned
    #: PUT) may go to; empty: signed-URL outputs are off.
    signed_url_hosts: list[str] = []


class MediaSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: Largest picture (width x height) an input may have; also ffmpeg's `-max_pixels`.
    max_pixels: Annotated[int, msgspec.Meta(ge=1)] = 8192 * 4320
    #: Longest input, in seconds.
    max_duration_s: Positive = 12 * 3600.0
    #: Largest input file (or download), in bytes.
    max_input_bytes: Annotated[int, msgspec.Meta(ge=1)] = 256 << 30
    #: Most streams (video, audio, subtitle, data) an input may have.
    max_streams: Annotated[int, msgspec.Meta(ge=1)] = 32
    #: Refuse inputs whose duration is unknown (a stream with no known end may be endless).
    require_duration: bool = True
    #: Largest single allocation ffmpeg may make, in MiB (`-max_alloc`; ffmpeg's own default is
    #: 2 GiB); 0: ffmpeg's default.
    max_alloc_mb: Annotated[int, msgspec.Meta(ge=0)] = 1024
    #: Demuxers inputs may be read with (`-format_whitelist`); any part of a demuxer's name counts.
    demuxers: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_DEMUXERS))
    #: Seconds the pre-probe of an input may take.
    probe_timeout: Positive = 60.0
    #: Refuse an input whose file extension names another container than the probe found
    #: (say `.mp4` holding a playlist or Matroska); unknown extensions are not checked.
    check_extension: bool = True
    #: Hosts (exact names, lowercase) that http(s):// inputs may come from; empty: http is off.
    http_hosts: list[str] = []
    #: Let allow-listed hosts resolve to private, loopback or link-local addresses.
    http_allow_private: bool = False
    #: Seconds to open a connection (each try).
    http_connect_timeout: Positive = 10.0
    #: Seconds a download may wait for the next bytes.
    http_read_timeout: Positive = 30.0
    #: Extra tries after a 5xx answer or a connection error, with doubling backoff.
    http_retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 3
    #: First backoff delay between tries, in seconds.
    http_backoff: Positive = 1.0
    #: Redirects followed at most (each target must be an allowed host too).
    http_max_redirects: Annotated[int, msgspec.Meta(ge=0, le=10)] = 5
    #: Object store buckets nats-obj:// URIs may name; empty: only `<prefix>_media` (with
    #: `tenant_buckets`: only the job's tenant bucket).
    object_buckets: list[str] = []
    #: Per-tenant buckets: a job of tenant T may name only `<prefix>_media_<T>` (and only if
    #: `object_buckets`, when set, lists it), matching the NATS role's per-tenant bucket rights.
    tenant_buckets: bool = False
    #: Seconds one object store (nats-obj:// or s3://) transfer may take in all.
    object_timeout: Positive = 3600.0
    #: s3:// inputs and outputs, and signed-URL outputs.
    s3: S3Settings = msgspec.field(default_factory=S3Settings)


class DaemonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: This node's id, unique in the fleet; default: the host's short name, lowercased,
    #: other characters replaced by `-`.
    node_id: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")] = msgspec.field(
        default_factory=_default_node_id
    )
    #: How to reach NATS.
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    #: Journal (SQLite) and per-job scratch space.
    state_dir: str = "/var/lib/flotilla"
    #: Inputs and outputs given as file:// URIs must resolve under one of these roots.
    allowed_roots: list[str] = msgspec.field(default_factory=lambda: ["/srv/media"])
    #: Path of the ffmpeg to run; default: `ffmpeg` on PATH, else the bundled static build.
    ffmpeg: str | None = None
    #: Path of ffprobe; default: the one next to ffmpeg, if any (else ffmpeg probes).
    ffprobe: str | None = None
    #: Free-form node labels; a job's `requirements.labels` must all match to run here.
    labels: dict[str, str] = {}
    #: Pools to serve; empty means every pool the probe verified. Besides the built-in `cpu`,
    #: `nvenc`, `qsv` and `vaapi`, any other name (e.g. `batch`) is a custom pool of the class
    #: `pool_classes` gives it (default `cpu`), served when that class is verified here.
    pools: list[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]] = []
    #: Capability class of each custom pool: its jobs need that class's encoders, and it is
    #: sized like it unless `slots` overrides; unnamed custom pools are `cpu`.
    pool_classes: dict[str, PoolClass] = {}
    #: Slot overrides per pool; otherwise measured from cores, GPU sessions and memory.
    slots: dict[str, Annotated[int, msgspec.Meta(ge=0, le=256)]] = {}
    #: CPU threads given to each software encode; cpu slots = logical cores / this.
    threads_per_job: Annotated[int, msgspec.Meta(ge=1, le=256)] = 2
    #: GPU memory one NVENC job needs; caps nvenc slots per GPU.
    gpu_memory_per_job_mb: Annotated[int, msgspec.Meta(ge=64)] = 1024
    #: NVENC sessions each GPU takes at once; unset: probed (see nvenc_session_probe), else 8.
    nvenc_sessions_per_gpu: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    #: Most concurrent sessions the start-up probe opens per NVENC GPU to find the driver's
    #: cap (GeForce cards allow 3 to 8); 0 skips the probe.
    nvenc_session_probe: Annotated[int, msgspec.Meta(ge=0, le=64)] = 12
    #: Run a tiny test encode on every hardware encoder at start-up; false
    #: accepts those the hardware suggests untested.
    verify_hw_encoders: bool = True
    #: Seconds between heartbeats (node record in the KV bucket). Each is a broker write and a
    #: decode on every control-plane instance: 1,000 nodes at 5 s were a fifth of the broker's
    #: writes. Keep two of them inside the control plane's node_ttl and node_offline_after
    #: (30 s): a node is offline 30 s after its last heartbeat whatever the interval, and the
    #: control plane logs a warning naming a node whose interval does not fit.
    heartbeat_interval: Positive = 10.0
    #: Ack wait the daemon assumes (in-progress acks go every quarter of it); keep it equal to
    #: the control plane's topology.ack_wait, which the pool consumers are created with.
    ack_wait: Positive = 120.0
    #: Idle fallback poll interval: an idle node holds no pull open; a submit to its pools wakes
    #: one idle node of the pool at once, and each looks at its job consumers at least this
    #: often anyway, to find redelivered jobs (they send no submit) or when the wake
    #: subscription is refused; a consumer it last found empty, at every sixth poll.
    fetch_timeout: Positive = 5.0
    #: Processing windows (`[[windows]]` tables of pools, priorities, start, end, tz, days):
    #: work of a rule's class is pulled only while one of its windows is open (node wall time in
    #: `tz`; `22:00`-`06:00` crosses midnight). Outside, that tier is not fetched (running jobs
    #: finish). Rules set at run time (`flotilla windows NODE --set`) win over these until
    #: `--from-config`.
    windows: Annotated[list[WindowRule], msgspec.Meta(max_length=MAX_WINDOWS)] = []
    #: Priority aging: after this many consecutive job starts from higher priorities while a
    #: lower one had jobs waiting, the next sweep first starts one job of the lower tier whose
    #: waiting job is oldest. Per node and pool; 0: strict priority (low may starve).
    aging_every: Annotated[int, msgspec.Meta(ge=0, le=10000)] = 8
    #: On drain or SIGTERM, running jobs get this long to finish before they are
    #: handed back.
    drain_deadline: Positive = 300.0
    #: A paused job is held (in-progress acks go on) at most this long, then resumed:
    #: resuming keeps the work done and starts no duplicate elsewhere.
    pause_limit: Positive = 3600.0
    #: First retry delay after a failed attempt; doubles per attempt.
    retry_base_delay: Positive = 5.0
    #: Longest retry delay.
    retry_max_delay: Positive = 300.0
    #: First delay before a job this node cannot run (requirements) is
    #: redelivered; doubles per attempt.
    handback_delay: Positive = 2.0
    #: Longest hand-back delay.
    handback_max_delay: Positive = 30.0
    #: Seconds between progress events of a running job. Each is a journal row, a broker write
    #: (fsynced) and an ingested row; at 1 s they were 90 % of a busy fleet's events. The soft
    #: timeout and the job's end are reported at once whatever the interval.
    progress_interval: Positive = 5.0
    #: Bound on unsent events kept while NATS is away; beyond it the oldest
    #: progress events are dropped (never terminal ones).
    outbox_max_rows: Annotated[int, msgspec.Meta(ge=100)] = 100_000
    #: Finished jobs and sent events are pruned from the journal after this.
    journal_retention_days: Positive = 7.0
    #: Free space under the work dir below which the node pulls no new jobs (running ones
    #: finish) and heartbeats report `disk_low`; pulling resumes when space returns. 0: off.
    disk_low_watermark_mb: Annotated[int, msgspec.Meta(ge=0)] = 1024
    #: The same watermark as a share of the work dir's file system, in percent; whichever of
    #: the two trips first holds pulling back. 0: off.
    disk_low_watermark_percent: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    #: Seconds between free-space checks of the work dir.
    disk_check_interval: Positive = 10.0
    #: Consecutive encoder failures that withdraw an encoder from service.
    encoder_failure_threshold: Annotated[int, msgspec.Meta(ge=1)] = 3
    #: A withdrawn encoder is re-tested after this many seconds.
    encoder_reverify_interval: Positive = 600.0
    #: Prometheus exporter port; 0 picks a free port.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 9464
    #: Address the Prometheus exporter binds.
    metrics_host: str = "127.0.0.1"
    #: JSON log lines (on stderr); unset: JSON under systemd or when stderr is not a terminal.
    log_json: bool | None = None
    #: Input limits and remote media (http(s)://, nats-obj://, s3://) settings.
    media: MediaSettings = msgspec.field(default_factory=MediaSettings)

    @property
    def journal_path(self) -> Path:
        return Path(self.state_dir) / "journal.sqlite3"

    @property
    def work_dir(self) -> Path:
        return Path(self.state_dir) / "work"


def load_daemon_config(path: Path | None, *, required: bool = False) -> DaemonConfig:
    return load_config(DaemonConfig, path, env_prefix=ENV_PREFIX, required=required)
