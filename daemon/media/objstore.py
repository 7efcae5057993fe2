"""`nats-obj://BUCKET/KEY` media: streamed from and to the JetStream object store, digest-checked.

Only buckets the node is configured for are touched (default `<prefix>_media`, where
`flotilla submit --upload` puts `uploads/<tenant>/<job_id>/<name>`). A download goes chunk by
chunk into a file in scratch through a writer that counts, caps and hashes what arrives; the
size and SHA-256 must then match the object's metadata (nats-py checks the digest too). Object
links are not followed: they could point into a bucket the node is not meant to read. An upload
streams the finished local file (read in a worker thread); the object appears only once all
chunks are stored, so a reader never sees half an output.

Writers hold no purge right and the media streams refuse roll-ups (a `Nats-Rollup: all` header
would wipe a bucket), so nats-py's `ObjectStore.put`, which purges the old chunks and rolls the
meta up, cannot be used: `put_object` stores the chunks under a fresh nuid and appends a new meta
message (readers take a name's last one), and `delete_object` appends a tombstone. The superseded
chunks and meta messages are left for the control plane's sweep (control.objsweep).
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import io
import json
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlsplit

from nats.js import JetStreamContext, api
from nats.js.errors import (
    BucketNotFoundError,
    DigestMismatchError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.object_store import ObjectStore
from nats.nuid import NUID

from daemon.errors import InputError, JobError, PathRefused, ResourceExhausted

SCHEME = "nats-obj"
_DIGEST_PREFIX = "SHA-256="
#: nats-py's chunk size, so objects look the same whichever client wrote them.
CHUNK_SIZE = 128 * 1024
_NUID = NUID()


def chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


def meta_subject(bucket: str, key: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(key.encode()).decode()}"


def parse_obj_uri(uri: str, buckets: Collection[str] | None) -> tuple[str, str]:
    """(bucket, key) of a `nats-obj://bucket/key` URI; PathRefused for anything else.

    `buckets` is the allow-list; None checks the syntax only (the caller checks the bucket).
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() != SCHEME:
        raise PathRefused(f"{uri[:200]!r} is not a {SCHEME}:// URI")
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise PathRefused(f"{SCHEME} URI must not carry '?' or '#'")
    bucket = parts.netloc
    if buckets is not None and bucket not in buckets:
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
        await js.object_store(bucket)
    except (BucketNotFoundError, NotFoundError) as exc:
        raise JobError(f"object store bucket {bucket!r} does not exist") from exc
    f = await asyncio.to_thread(path.open, "rb")
    try:
        async with asyncio.timeout(within):
            info = await put_object(js, bucket, key, f)
    except TimeoutError as exc:
        raise JobError(f"uploading {key!r} took longer than {within:g} s") from exc
    finally:
        await asyncio.to_thread(f.close)
    return int(info.size or 0), _hex_digest(info.digest)


async def put_object(
    js: JetStreamContext, bucket: str, key: str, f: io.BufferedIOBase
) -> api.ObjectInfo:
    """Store `key` from the open file `f` with publish rights alone (no purge, no roll-up).

    The chunks go under a fresh nuid and only then does the new meta message land, so readers
    see the old object or the new one, never a mix; the old chunks become orphans.
    """
    nuid = _NUID.next().decode()
    subject = chunk_subject(bucket, nuid)
    sha = hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    size = chunks = 0
    while n := await asyncio.to_thread(f.readinto, buf):
        payload = bytes(buf[:n])
        sha.update(payload)
        await js.publish(subject, payload)
        size, chunks = size + n, chunks + 1
    digest = base64.urlsafe_b64encode(sha.digest()).decode()
    info = api.ObjectInfo(
        name=key, bucket=bucket, nuid=nuid, size=size, chunks=chunks,
        digest=f"{_DIGEST_PREFIX}{digest}", mtime=datetime.now(UTC).isoformat(),
        options=api.ObjectMetaOptions(max_chunk_size=CHUNK_SIZE),
    )  # fmt: skip
    await js.publish(meta_subject(bucket, key), json.dumps(info.as_dict()).encode())
    return info


async def delete_object(js: JetStreamContext, bucket: str, key: str) -> None:
    """Mark `key` deleted (a tombstone meta, as nats-py writes); the sweep takes its chunks."""
    info = await ObjectStore(bucket, f"OBJ_{bucket}", js).get_info(key)
    info.deleted, info.size, info.chunks, info.digest, info.mtime = True, 0, 0, "", ""
    await js.publish(meta_subject(bucket, key), json.dumps(info.as_dict()).encode())


def _hex_digest(digest: str | None) -> str:
    if not digest or not digest.upper().startswith(_DIGEST_PREFIX):
        raise JobError(f"object has no SHA-256 digest ({digest!r})")
    raw = digest[len(_DIGEST_PREFIX) :]
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
