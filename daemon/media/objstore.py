"""`nats-obj://BUCKET/KEY` media: streamed from and to the JetStream object store, digest-checked.

Only buckets the node is configured for are touched (default `<prefix>_media`, where
`flotilla submit --upload` puts `uploads/<job_id>/<name>`). A download goes chunk by chunk into
a file in scratch through a writer that counts, caps and hashes what arrives; the size and
SHA-256 must then match the object's metadata (nats-py checks the digest too). Object links are
not followed: they could point into a bucket the node is not meant to read. An upload streams
the finished local file (nats-py reads it in a worker thread); the object appears only once all
chunks are stored, so a reader never sees half an output.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from nats.js import JetStreamContext
from nats.js.errors import (
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore

from daemon.errors import InputError, JobError, PathRefused, ResourceExhausted

SCHEME = "nats-obj"
_DIGEST_PREFIX = "SHA-256="


def parse_obj_uri(uri: str, buckets: Collection[str]) -> tuple[str, str]:
    """(bucket, key) of a `nats-obj://bucket/key` URI; PathRefused for anything else."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != SCHEME:
        raise PathRefused(f"{uri[:200]!r} is not a {SCHEME}:// URI")
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise PathRefused(f"{SCHEME} URI must not carry '?' or '#'")
    bucket = parts.netloc
    if bucket not in buckets:
        raise PathRefused(f"bucket {bucket[:100]!r} is not one this node may use")
    try:
        key = unquote(parts.path.removeprefix("/"), errors="strict")
    except UnicodeDecodeError as exc:
        raise PathRefused("object key is not valid UTF-8 after percent-decoding") from exc
    if not key or key.endswith("/") or "\x00" in key or ".." in PurePosixPath(key).parts:
        raise PathRefused(f"bad object key {key[:200]!r}")
    return bucket, key


def obj_uri(bucket: str, key: str) -> str:
    return f"{SCHEME}://{bucket}/{key}"


class _Sink(io.BufferedIOBase):
    """What nats-py writes chunks into (from a worker thread): counted, capped and hashed."""

    def __init__(self, f: BinaryIO, cap: int) -> None:
        self._f, self._cap = f, cap
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.size += len(data)
        if self.size > self._cap:
            raise InputError(f"object is over the input cap of {self._cap} bytes")
        self.sha.update(data)
        return self._f.write(data)


async def _store(js: JetStreamContext, bucket: str) -> ObjectStore:
    try:
        return await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError) as exc:
        raise InputError(f"object store bucket {bucket!r} does not exist") from exc


async def download(
    js: JetStreamContext, bucket: str, key: str, dest: Path, *, cap: int, within: float
) -> int:
    """Fetch one object into `dest`; returns its size. InputError when absent or too large."""
    store = await _store(js, bucket)
    try:
        info = await store.get_info(key)
    except ObjectNotFoundError as exc:
        raise InputError(f"object {key!r} not found in bucket {bucket!r}") from exc
    if info.options is not None and info.options.link is not None:
        raise InputError(f"object {key!r} is a link: links are not followed")
    if (info.size or 0) > cap:
        raise InputError(f"object is {info.size} bytes, over the input cap of {cap}")
    f = await asyncio.to_thread(dest.open, "wb")
    try:
        sink = _Sink(f, cap)
        async with asyncio.timeout(within):
            await store.get(key, writeinto=sink)
    except TimeoutError as exc:
        raise JobError(f"downloading {key!r} took longer than {within:g} s") from exc
    except (NotFoundError, ObjectNotFoundError) as exc:
        raise InputError(f"object {key!r} vanished while downloading") from exc
    except DigestMismatchError as exc:
        raise JobError(f"object {key!r} arrived corrupt (SHA-256 mismatch)") from exc
    except OSError as exc:
        kind = ResourceExhausted if exc.errno == errno.ENOSPC else JobError
        raise kind(f"cannot write the download of {key!r}: {exc.strerror}") from exc
    finally:
        await asyncio.to_thread(f.close)
    expected = _hex_digest(info.digest)
    if sink.size != (info.size or 0) or sink.sha.hexdigest() != expected:
        raise JobError(f"object {key!r} arrived corrupt (size or SHA-256 mismatch)")
    return sink.size


async def upload(
    js: JetStreamContext, bucket: str, key: str, path: Path, *, within: float
) -> tuple[int, str]:
    """Store the local file `path` as `key`; returns (size, SHA-256 hex) as the store saw them."""
    try:
        store = await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError) as exc:
        raise JobError(f"object store bucket {bucket!r} does not exist") from exc
    f = await asyncio.to_thread(path.open, "rb")
    try:
        async with asyncio.timeout(within):
            info = await store.put(key, f)
    except TimeoutError as exc:
        raise JobError(f"uploading {key!r} took longer than {within:g} s") from exc
    finally:
        await asyncio.to_thread(f.close)
    return int(info.size or 0), _hex_digest(info.digest)


def _hex_digest(digest: str | None) -> str:
    if not digest or not digest.upper().startswith(_DIGEST_PREFIX):
        raise JobError(f"object has no SHA-256 digest ({digest!r})")
    raw = digest[len(_DIGEST_PREFIX) :]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
