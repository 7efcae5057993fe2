"""Where an operation's media come from and go to: file://, http(s)://, nats-obj:// and s3:// URIs.

`open_input` turns an input URI into a local file and its probe, refusing it before any heavy
work when it breaks a limit (daemon.media.limits): file:// resolves under the roots; http(s),
nats-obj and s3 are downloaded into the attempt's scratch directory (removed when the attempt
ends). `output_path` is where the operation writes: under the roots for file://, else a staging
folder in scratch; `publish_outputs` uploads what was staged there once the operation succeeded
(its outputs committed, so past the effects-once check) and rewrites the result's output URIs
(with their size and SHA-256) to the store's. An http(s):// output is a presigned URL
(daemon.media.httpput): one file, PUT once, reported without its query (the signature).

Nothing reaches the final key before the local encode is complete. A redelivered attempt that
uploads again finds the same bytes already there and skips (s3: same size and SHA-256), or
replaces an object no `completed` event described; it never runs once the job has ended.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit

from nats.js import JetStreamContext

from daemon.config import DaemonConfig, MediaSettings
from daemon.errors import InvalidJob, PathRefused
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media import s3
from daemon.media.httpfetch import fetch_http
from daemon.media.httpput import check_signed_url, public_url, put_signed
from daemon.media.limits import check_file, check_probe, global_args, guard_args
from daemon.media.objstore import download, obj_uri, parse_obj_uri, upload
from daemon.media.paths import ffmpeg_arg, resolve_input, resolve_output, uri_of
from daemon.media.probe import probe_media
from schemas.jobs import JobSpec
from schemas.operations import Package, PerTitle, Thumbnail
from schemas.results import JobResult, OutputFile, ProbeInfo


class MediaJob(Protocol):
    """What media access needs of one attempt (daemon.ops.context.JobContext has it)."""

    @property
    def spec(self) -> JobSpec: ...
    @property
    def scratch(self) -> Path: ...
    @property
    def tools(self) -> FfmpegTools: ...
    @property
    def allowed_roots(self) -> Sequence[Path]: ...
    @property
    def handle(self) -> JobHandle: ...
    @property
    def media(self) -> MediaAccess: ...


log = logging.getLogger("flotilla.media")
_STAGE = "objout"
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class MediaAccess:
    """The node's media settings and, where it has one, the JetStream handle for nats-obj://."""

    limits: MediaSettings = field(default_factory=MediaSettings)
    js: JetStreamContext | None = None
    buckets: frozenset[str] = frozenset()
    #: `<prefix>_media_` when per-tenant buckets are on: a job may use only its tenant's.
    tenant_prefix: str = ""

    @classmethod
    def for_config(cls, cfg: DaemonConfig, js: JetStreamContext | None) -> MediaAccess:
        if cfg.media.s3.buckets and importlib.util.find_spec("obstore") is None:
            log.warning("media.s3.buckets is set, but %s; until then s3:// jobs fail here",
                        s3.EXTRA_HINT)  # fmt: skip
        if cfg.media.tenant_buckets:
            tenant_prefix = f"{cfg.nats.prefix}_media_"
            return cls(limits=cfg.media, js=js, buckets=frozenset(cfg.media.object_buckets),
                       tenant_prefix=tenant_prefix)  # fmt: skip
        buckets = cfg.media.object_buckets or [f"{cfg.nats.prefix}_media"]
        return cls(limits=cfg.media, js=js, buckets=frozenset(buckets))

    def locate(self, uri: str, tenant: str) -> tuple[str, str]:
        """(bucket, key) of a nats-obj:// URI a job of `tenant` may use; else PathRefused.

        The broker can only separate tenants by bucket, so this receiver check is what keeps
        one tenant's job from naming another's bucket on a node that may reach them all.
        """
        if not self.tenant_prefix:
            return parse_obj_uri(uri, self.buckets)
        bucket, key = parse_obj_uri(uri, None)
        own = self.tenant_prefix + tenant
        if bucket != own:
            raise PathRefused(f"bucket {bucket[:100]!r} is not tenant {tenant!r}'s ({own!r})")
        if self.buckets and bucket not in self.buckets:
            raise PathRefused(f"bucket {bucket[:100]!r} is not one this node may use")
        return bucket, key

    @cached_property
    def s3_stores(self) -> s3.S3Stores:
        """The node's S3 client (one store per bucket), built on first use."""
        return s3.S3Stores(self.limits.s3, connect_timeout=self.limits.http_connect_timeout)

    def locate_s3(self, uri: str) -> tuple[str, str]:
        """(bucket, key) of an s3:// URI on the node's bucket list; else PathRefused."""
        return s3.parse_s3_uri(uri, self.limits.s3.buckets)

    def input_args(self, path: Path) -> list[str]:
        """`<guards> -i file:<path>` for one input."""
        return [*guard_args(self.limits), "-i", ffmpeg_arg(path)]

    def guard(self) -> tuple[str, ...]:
        """Global caps plus the input guards, for an ffmpeg run with one input."""
        return (*global_args(self.limits), *guard_args(self.limits))


async def open_input(ctx: MediaJob, uri: str, role: str = "input") -> tuple[Path, ProbeInfo]:
    """The local file behind `uri` and its probe, within the limits (else a permanent error)."""
    local, size = await local_input(ctx, uri, role)
    return local, await probe_input(ctx, local, size, uri)


async def probe_input(ctx: MediaJob, local: Path, size: int, uri: str) -> ProbeInfo:
    """`open_input`'s second step: the probe, within the limits (else a permanent error)."""
    limits = ctx.media.limits
    info = await probe_media(ctx.tools, local, within=limits.probe_timeout, limits=limits)
    info.size_bytes = size
    check_probe(info, limits, _suffix(uri))
    return info


async def local_input(ctx: MediaJob, uri: str, role: str = "input") -> tuple[Path, int]:
    """`open_input`'s first step: the local file (fetched, within the size cap) and its size.
    An encode whose command needs no probe may start before `probe_input` (daemon.ops
    .transcode), and must not be kept unless the probe passes."""
    media, limits = ctx.media, ctx.media.limits
    scheme = urlsplit(uri).scheme.lower() if "\x00" not in uri else ""
    local = ctx.scratch / f"{role}{_suffix(uri)}"
    match scheme:
        case "http" | "https":
            await fetch_http(uri, local, limits)
        case "nats-obj":
            bucket, key = media.locate(uri, ctx.spec.tenant)
            js = _js(media)
            await download(js, bucket, key, local, cap=limits.max_input_bytes,
                           within=limits.object_timeout)  # fmt: skip
        case s3.SCHEME:
            bucket, key = media.locate_s3(uri)
            await s3.download(media.s3_stores, bucket, key, local, cap=limits.max_input_bytes,
                              within=limits.object_timeout)  # fmt: skip
        case _:
            local = await asyncio.to_thread(resolve_input, uri, ctx.allowed_roots)
    return local, await asyncio.to_thread(check_file, local, limits)


async def output_path(ctx: MediaJob, uri: str) -> Path:
    """The local path an operation writes `uri` to (staged in scratch for remote outputs)."""
    scheme = urlsplit(uri).scheme.lower() if "\x00" not in uri else ""
    match scheme:
        case "nats-obj":
            _, key = ctx.media.locate(uri, ctx.spec.tenant)
            _js(ctx.media)
        case s3.SCHEME:
            bucket, key = ctx.media.locate_s3(uri)
            await ctx.media.s3_stores.store(bucket)  # the extra and the secret, checked up front
        case "http" | "https":
            key = check_signed_url(uri, ctx.media.limits).path or "output"
            if _writes_several(ctx.spec):
                raise InvalidJob("a signed-URL output takes one file: this operation writes "
                                 "several (use s3://, nats-obj:// or file://)")  # fmt: skip
        case _:
            return await asyncio.to_thread(resolve_output, uri, ctx.allowed_roots)
    if uri == ctx.spec.input:
        raise InvalidJob("output is the same object as the input")
    stage = ctx.scratch / _STAGE
    await asyncio.to_thread(stage.mkdir, parents=True, exist_ok=True)
    return stage / _stage_name(key)


async def publish_outputs(ctx: MediaJob, result: JobResult) -> None:
    """Upload every file staged for a remote output; point the result's outputs at them."""
    uri = ctx.spec.output
    scheme = urlsplit(uri).scheme.lower() if uri is not None else ""
    if uri is None or scheme not in ("nats-obj", s3.SCHEME, "http", "https"):
        return
    stage = ctx.scratch / _STAGE
    files = await asyncio.to_thread(_staged_files, stage)
    if scheme in ("http", "https"):
        stored = await _put_signed(ctx, uri, stage, files)
        key = check_signed_url(uri, ctx.media.limits).path or "output"
    else:
        stored, key = await _upload_all(ctx, uri, scheme, stage, files)
    main = uri_of(stage / _stage_name(key))
    for out in result.outputs:
        up = stored.get(main if out.uri == uri else out.uri)
        if up is not None:
            out.uri, out.size_bytes, out.sha256 = up.uri, up.size_bytes, up.sha256


async def _upload_all(
    ctx: MediaJob, uri: str, scheme: str, stage: Path, files: list[Path]
) -> tuple[dict[str, OutputFile], str]:
    """Upload the staged files next to the output's key; {staged file URI: stored output}."""
    media, within = ctx.media, ctx.media.limits.object_timeout
    if scheme == s3.SCHEME:
        bucket, key = media.locate_s3(uri)
    else:
        bucket, key = media.locate(uri, ctx.spec.tenant)
    parent = key.rsplit("/", 1)[0] + "/" if "/" in key else ""
    stored: dict[str, OutputFile] = {}
    for path in files:
        ctx.handle.check()
        obj_key = parent + path.relative_to(stage).as_posix()
        if scheme == s3.SCHEME:
            size, digest = await s3.upload(media.s3_stores, bucket, obj_key, path, within=within)
            where = s3.s3_uri(bucket, obj_key)
        else:
            size, digest = await upload(_js(media), bucket, obj_key, path, within=within)
            where = obj_uri(bucket, obj_key)
        stored[uri_of(path)] = OutputFile(uri=where, size_bytes=size, sha256=digest)
    return stored, key


async def _put_signed(
    ctx: MediaJob, uri: str, stage: Path, files: list[Path]
) -> dict[str, OutputFile]:
    if len(files) != 1:
        raise InvalidJob(f"a signed-URL output takes one file; the operation wrote {len(files)}")
    ctx.handle.check()
    size, digest = await put_signed(uri, files[0], ctx.media.limits)
    shown = public_url(check_signed_url(uri, ctx.media.limits))
    return {uri_of(files[0]): OutputFile(uri=shown, size_bytes=size, sha256=digest)}


def _stage_name(key: str) -> str:
    name = PurePosixPath(key).name
    return name if name not in ("", ".", "..") else "output"


def _writes_several(spec: JobSpec) -> bool:
    op = spec.operation
    return isinstance(op, Package | PerTitle) or (isinstance(op, Thumbnail) and op.sprite)


def _staged_files(stage: Path) -> list[Path]:
    if not stage.is_dir():
        return []
    return sorted(p for p in stage.rglob("*") if p.is_file() and not p.name.endswith(".partial"))


def _js(media: MediaAccess) -> JetStreamContext:
    if media.js is None:
        raise PathRefused("this node has no object store access (nats-obj:// unavailable)")
    return media.js


def _suffix(uri: str) -> str:
    # Keep a plain extension: a few demuxers (raw streams) are chosen partly by it.
    suffix = PurePosixPath(urlsplit(uri).path).suffix
    return suffix if _SUFFIX.match(suffix) else ""
