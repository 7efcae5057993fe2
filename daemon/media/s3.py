"""`s3://BUCKET/KEY` media through obstore (Python bindings of Rust's object_store).

Only buckets on `media.s3.buckets` are touched: a job names `s3://bucket/key` and nothing else;
the endpoint, region and credentials are the node's (`[media.s3]`, else the environment:
`AWS_ACCESS_KEY_ID`…, web identity, container credentials, then the instance profile), so a
producer can neither pick where a node writes beyond its list nor see or send a credential.

A download streams into a file in scratch, counted against the input cap, its SHA-256 checked
against the `sha256` metadata this module writes (objects from elsewhere carry none: the size is
checked then). An upload is multipart once the file is larger than `part_size`, with the
library's retries and, when `checksums`, an SHA-256 per request the server verifies; the object
appears under its key only when the upload completes, so a reader never sees half an output.
An upload whose key already holds the same bytes (same size and `sha256` metadata: a redelivered
attempt's) is skipped.

obstore is the `s3` extra: a node without it refuses s3:// with a message naming the extra.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
from collections.abc import Collection
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from daemon.config import S3Settings
from daemon.errors import InputError, InvalidJob, JobError, PathRefused, ResourceExhausted

if TYPE_CHECKING:
    from obstore.store import S3Store

SCHEME = "s3"
EXTRA_HINT = "s3:// needs the `s3` extra on this node: pip install 'flotilla-fleet[s3]'"
_SHA_META = "sha256"
#: Bucket names as S3 allows them (3-63 of lowercase letters, digits, dots and hyphens).
_BUCKET_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789.-")


def parse_s3_uri(uri: str, buckets: Collection[str]) -> tuple[str, str]:
    """(bucket, key) of an `s3://bucket/key` URI on the allow-list; else PathRefused."""
    parts = urlsplit(uri)
    if parts.scheme.lower() != SCHEME:
        raise PathRefused(f"{uri[:200]!r} is not an {SCHEME}:// URI")
    if parts.query or parts.fragment or uri.endswith(("?", "#")):
        raise PathRefused(f"{SCHEME} URI must not carry '?' or '#'")
    bucket = parts.netloc
    if not buckets:
        raise PathRefused("s3:// is off on this node (media.s3.buckets is empty)")
    if bucket not in buckets or not set(bucket) <= _BUCKET_CHARS:
        raise PathRefused(f"bucket {bucket[:100]!r} is not one this node may use")
    try:
        key = unquote(parts.path.removeprefix("/"), errors="strict")
    except UnicodeDecodeError as exc:
        raise PathRefused("object key is not valid UTF-8 after percent-decoding") from exc
    if not key or key.endswith("/") or "\x00" in key or ".." in PurePosixPath(key).parts:
        raise PathRefused(f"bad object key {key[:200]!r}")
    return bucket, key


def s3_uri(bucket: str, key: str) -> str:
    return f"{SCHEME}://{bucket}/{key}"


class S3Stores:
    """One obstore S3Store per bucket, built on first use from the node's settings."""

    def __init__(self, settings: S3Settings, *, connect_timeout: float = 10.0) -> None:
        self.settings = settings
        self._connect_timeout = connect_timeout
        self._stores: dict[str, S3Store] = {}
        self._secret: str | None = None

    async def store(self, bucket: str) -> S3Store:
        if bucket not in self._stores:
            secret = (
                await asyncio.to_thread(self._read_secret) if self.settings.access_key_id else None
            )
            self._stores[bucket] = self._build(bucket, secret)
        return self._stores[bucket]

    def scrub(self, text: str) -> str:
        """`text` without the secret key, cut short: error texts go into events and logs."""
        if self._secret:
            text = text.replace(self._secret, "<secret>")
        return text[:400]

    def _build(self, bucket: str, secret: str | None) -> S3Store:
        try:
            from obstore.store import S3Store
        except ImportError as exc:
            # The node's setup, not the job: transient, so that a node with the extra may run it.
            raise JobError(EXTRA_HINT) from exc
        s = self.settings
        config: dict[str, Any] = {"virtual_hosted_style_request": s.virtual_hosted_style}
        if s.endpoint_url:
            config["endpoint"] = s.endpoint_url
        if s.region:
            config["region"] = s.region
        if s.checksums:
            config["checksum_algorithm"] = "SHA256"
        if s.access_key_id and secret:
            config["access_key_id"] = s.access_key_id
            config["secret_access_key"] = secret
        client: dict[str, Any] = {
            "allow_http": s.allow_http,
            "connect_timeout": timedelta(seconds=self._connect_timeout),
        }
        retry: dict[str, Any] = {"max_retries": s.retries}
        return S3Store(bucket, config=config, client_options=client, retry_config=retry)  # type: ignore[arg-type]

    def _read_secret(self) -> str:
        """The secret key from its file (blocking: call it in a thread)."""
        path = self.settings.secret_access_key_file
        if not path:
            raise JobError("media.s3.access_key_id is set without secret_access_key_file")
        try:
            secret = Path(path).read_text().strip()
        except OSError as exc:
            raise JobError(f"cannot read media.s3.secret_access_key_file: {exc.strerror}") from exc
        if not secret:
            raise JobError("media.s3.secret_access_key_file is empty")
        self._secret = secret
        return secret


def _classify(exc: Exception, stores: S3Stores, what: str, *, reading: bool) -> JobError:
    """A JobError for an obstore failure: the job's fault is permanent, the node's transient."""
    from obstore import exceptions as ox

    text = stores.scrub(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if isinstance(exc, FileNotFoundError) and reading:  # obstore's "no such object"
        return InputError(f"{what}: not found")
    if "NoSuchBucket" in str(exc):
        return InvalidJob(f"{what}: the bucket does not exist")
    if isinstance(exc, ox.UnauthenticatedError | ox.PermissionDeniedError) or any(
        code in str(exc) for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch")
    ):
        # The node's credentials, not the job: another node (or a fixed config) may succeed.
        return JobError(f"{what}: S3 refused this node's credentials or policy ({text})")
    return JobError(f"{what}: {text}")


async def download(
    stores: S3Stores, bucket: str, key: str, dest: Path, *, cap: int, within: float
) -> int:
    """Fetch one object into `dest`; returns its size. InputError when absent or too large."""
    import obstore

    what = f"s3 input {s3_uri(bucket, key)[:300]}"
    store = await stores.store(bucket)
    sha = hashlib.sha256()
    size = 0
    f = await asyncio.to_thread(dest.open, "wb")
    try:
        async with asyncio.timeout(within):
            result = await obstore.get_async(store, key)
            expected = int(result.meta["size"])
            if expected > cap:
                raise InputError(f"{what} is {expected} bytes, over the input cap of {cap}")
            async for chunk in result.stream():
                data = bytes(chunk)
                size += len(data)
                if size > cap:
                    raise InputError(f"{what} is over the input cap of {cap} bytes")
                sha.update(data)
                await asyncio.to_thread(_write, f, data, what)
    except TimeoutError as exc:
        raise JobError(f"downloading {what} took longer than {within:g} s") from exc
    except JobError:
        raise
    except Exception as exc:
        raise _classify(exc, stores, what, reading=True) from exc
    finally:
        await asyncio.to_thread(f.close)
    digest = result.attributes.get(_SHA_META)
    if size != expected or (digest is not None and digest != sha.hexdigest()):
        raise JobError(f"{what} arrived corrupt (size or SHA-256 mismatch)")
    return size


async def upload(
    stores: S3Stores, bucket: str, key: str, path: Path, *, within: float
) -> tuple[int, str]:
    """Store the local file `path` as `key`; returns (size, SHA-256 hex) of what was stored."""
    import obstore

    what = f"s3 output {s3_uri(bucket, key)[:300]}"
    store = await stores.store(bucket)
    size, digest = await asyncio.to_thread(_hash_file, path)
    s = stores.settings
    try:
        async with asyncio.timeout(within):
            if await _holds(store, key, size, digest):
                return size, digest  # an earlier attempt stored these very bytes
            await obstore.put_async(
                store, key, path, attributes={_SHA_META: digest},
                chunk_size=s.part_size, max_concurrency=s.max_concurrency,
            )  # fmt: skip
    except TimeoutError as exc:
        raise JobError(f"uploading {what} took longer than {within:g} s") from exc
    except Exception as exc:
        raise _classify(exc, stores, what, reading=False) from exc
    return size, digest


async def _holds(store: S3Store, key: str, size: int, digest: str) -> bool:
    """True when `key` already holds an object of this size and `sha256` metadata."""
    import obstore
    from obstore.exceptions import PermissionDeniedError

    try:
        found = await obstore.get_async(store, key, options={"head": True})
    except (FileNotFoundError, PermissionDeniedError):  # absent, or write-only credentials
        return False
    return int(found.meta["size"]) == size and found.attributes.get(_SHA_META) == digest


def _write(f: BinaryIO, data: bytes, what: str) -> None:
    try:
        f.write(data)
    except OSError as exc:  # our disk, not the store
        kind = ResourceExhausted if exc.errno == errno.ENOSPC else JobError
        raise kind(f"cannot write the download of {what}: {exc.strerror}") from exc


def _hash_file(path: Path) -> tuple[int, str]:
    sha = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()
