"""Signed-URL outputs: the finished file PUT once to an `https://` URL the producer presigned.

A presigned URL (S3's `X-Amz-Signature=…`, or GCS/R2 equivalents) is a capability for one key,
made by whoever owns the bucket: the node needs no credential of its own for it. Policy is the
http inputs' (common.netvet): only hosts on `media.s3.signed_url_hosts`, no credentials in the
URL, every resolved address public unless `media.http_allow_private`, the connection pinned to
the vetted address; plain http only with `media.s3.allow_http`. The body is streamed from the
file with its Content-Length (one PUT: S3 takes up to 5 GiB this way). 5xx, 429 and connection
errors are retried with doubling backoff; another answer (403: expired or not signed for PUT)
is final. When the server answers an MD5 ETag (S3 does for a plain PUT) it must match the file.

The URL's query is the signature: it is never put in an error text, a log line or the result
(daemon.media.access reports the URL without it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import ssl
from pathlib import Path
from urllib.parse import SplitResult, urlunsplit

from common.netvet import Refused, Unresolvable, split_url
from daemon.config import MediaSettings
from daemon.errors import JobError, PathRefused
from daemon.media.httpfetch import vetted_address
from daemon.media.httpget import MAX_HEAD_LINE, HttpProtocolError, read_head

log = logging.getLogger("flotilla.http")
_CHUNK = 1 << 20
_MD5 = re.compile(r'^"?([0-9a-f]{32})"?$')


class _Retryable(Exception):
    pass


def check_signed_url(url: str, media: MediaSettings) -> SplitResult:
    """Refuse a signed-URL output the node must not write to (PathRefused); returns it split."""
    s3 = media.s3
    if not s3.signed_url_hosts:
        raise PathRefused("signed-URL outputs are off on this node (media.s3.signed_url_hosts)")
    schemes = ("https", "http") if s3.allow_http else ("https",)
    try:
        parts = split_url(url, schemes)
    except Refused as exc:
        raise PathRefused(f"signed-URL output refused: {exc}") from exc
    host = (parts.hostname or "").lower()
    if host not in {h.lower() for h in s3.signed_url_hosts}:
        raise PathRefused(f"host {host[:200]!r} is not on this node's signed-URL allow-list")
    if not parts.query:
        raise PathRefused("an http(s) output must be a presigned URL (it has no query)")
    return parts


def public_url(parts: SplitResult) -> str:
    """The URL without its query (the signature): what events and logs may show."""
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


async def put_signed(url: str, path: Path, media: MediaSettings) -> tuple[int, str]:
    """PUT the file at `path` to the signed `url`; returns (size, SHA-256 hex) of what was sent."""
    parts = check_signed_url(url, media)
    shown = public_url(parts)
    size, sha, md5 = await asyncio.to_thread(_digests, path)
    delay = media.http_backoff
    for attempt in range(media.http_retries + 1):
        try:
            etag = await _put_once(parts, path, size, media)
        except _Retryable as exc:
            if attempt == media.http_retries:
                raise JobError(f"signed-URL output {shown} failed after {attempt + 1} tries: "
                               f"{exc}") from exc  # fmt: skip
            log.warning("signed-URL PUT try %d failed (%s); retrying in %.1fs",
                        attempt + 1, exc, delay)  # fmt: skip
            await asyncio.sleep(delay)
            delay *= 2
            continue
        found = _MD5.match(etag.lower())
        if found and found.group(1) != md5:
            raise JobError(f"signed-URL output {shown} arrived corrupt (ETag is not its MD5)")
        return size, sha
    raise AssertionError("unreachable")


async def _put_once(parts: SplitResult, path: Path, size: int, media: MediaSettings) -> str:
    host = parts.hostname or ""
    tls = parts.scheme.lower() == "https"
    port = parts.port or (443 if tls else 80)
    try:
        address = await vetted_address(host, port, media)
    except Exception as exc:
        if isinstance(exc.__cause__, Unresolvable):
            raise _Retryable(f"cannot resolve {host}") from exc
        raise
    ctx = ssl.create_default_context() if tls else None
    name = f"[{host}]" if ":" in host else host
    target = (parts.path or "/") + f"?{parts.query}"
    head = [
        f"PUT {target} HTTP/1.1",
        f"Host: {name if port in (80, 443) else f'{name}:{port}'}",
        "User-Agent: flotilla-daemon",
        f"Content-Length: {size}",
        "Connection: close",
    ]
    try:
        async with asyncio.timeout(media.http_connect_timeout):
            reader, writer = await asyncio.open_connection(
                address, port, ssl=ctx, server_hostname=host if tls else None, limit=MAX_HEAD_LINE
            )
    except (OSError, TimeoutError) as exc:
        raise _Retryable(f"cannot connect to {host}: {type(exc).__name__}") from exc
    try:
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii"))
        await _send_file(writer, path, media.http_read_timeout)
        async with asyncio.timeout(media.http_read_timeout):
            status, headers = await read_head(reader)
    except (OSError, TimeoutError, HttpProtocolError) as exc:
        raise _Retryable(f"PUT to {host} broke off: {type(exc).__name__}") from exc
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()
    if status >= 500 or status == 429:
        raise _Retryable(f"HTTP {status} from {host}")
    if not 200 <= status < 300:
        hint = " (expired, or not signed for this PUT)" if status == 403 else ""
        raise JobError(f"signed-URL output refused by {host}: HTTP {status}{hint}",
                       kind="permanent")  # fmt: skip
    return headers.get("etag", "")


async def _send_file(writer: asyncio.StreamWriter, path: Path, wait: float) -> None:
    f = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, _CHUNK):
            writer.write(chunk)
            async with asyncio.timeout(wait):
                await writer.drain()
    finally:
        await asyncio.to_thread(f.close)


def _digests(path: Path) -> tuple[int, str, str]:
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), md5.hexdigest()
