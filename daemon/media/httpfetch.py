"""http(s):// inputs: policy around daemon.media.httpget, downloading into the scratch directory.

Every URL (the first and each redirect target) must be http(s), carry no credentials and name a
host on `media.http_hosts` (exact, lowercase); an empty list turns http inputs off. The host is
resolved once, and every address it resolves to must be public (not private, loopback,
link-local, multicast or reserved) unless `http_allow_private`; the connection then goes to that
vetted address, so a DNS answer that changes between check and connect cannot redirect it. The
shape and address checks are common.netvet's, shared with the control plane's webhooks.

Retries (bounded, doubling backoff): connection errors, timeouts, protocol errors, 5xx and 429.
Not retried here: refused URLs (PathRefused), 4xx and oversize bodies (InputError), all
permanent. A partial download is removed before each retry and on failure; the body goes to disk
chunk by chunk, never whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
from pathlib import Path
from urllib.parse import SplitResult, urljoin

import aiofiles

from common.netvet import Refused, Unresolvable, split_url, vet_address
from daemon.config import MediaSettings
from daemon.errors import InputError, JobError, PathRefused, ResourceExhausted
from daemon.media.httpget import BodyRefused, HttpProtocolError, Response, open_get, stream_body

log = logging.getLogger("flotilla.http")
_REDIRECTS = (301, 302, 303, 307, 308)
_SCHEMES = ("http", "https")


class _Retryable(Exception):
    pass


async def fetch_http(url: str, dest: Path, media: MediaSettings) -> int:
    """Download `url` into `dest`; returns its size. Raises a JobError subclass on failure."""
    delay = media.http_backoff
    for attempt in range(media.http_retries + 1):
        try:
            return await _follow(url, dest, media)
        except _Retryable as exc:
            await asyncio.to_thread(_unlink, dest)
            if attempt == media.http_retries:
                raise JobError(f"http input failed after {attempt + 1} tries: {exc}") from exc
            log.warning("http input try %d failed (%s); retrying in %.1fs", attempt + 1, exc, delay)
            await asyncio.sleep(delay)
            delay *= 2
        except BaseException:
            await asyncio.to_thread(_unlink, dest)
            raise
    raise AssertionError("unreachable")


async def _follow(url: str, dest: Path, media: MediaSettings) -> int:
    for _ in range(media.http_max_redirects + 1):
        parts = check_url(url, media)
        resp = await _connect(parts, media)
        try:
            if resp.status in _REDIRECTS:
                location = resp.headers.get("location")
                if not location:
                    raise InputError(f"HTTP {resp.status} redirect without a Location")
                url = urljoin(url, location)
                continue
            if resp.status >= 500 or resp.status == 429:
                raise _Retryable(f"HTTP {resp.status} from {parts.hostname}")
            if resp.status != 200:
                raise InputError(f"HTTP {resp.status} from {parts.hostname} for the input")
            return await _save(resp, dest, media)
        finally:
            await resp.close()
    raise InputError(f"more than {media.http_max_redirects} redirects")


def check_url(url: str, media: MediaSettings) -> SplitResult:
    """Refuse a URL the node must not fetch (PathRefused); returns it split."""
    if not media.http_hosts:
        raise PathRefused("http(s) inputs are disabled on this node (media.http_hosts is empty)")
    try:
        parts = split_url(url, _SCHEMES)
    except Refused as exc:
        raise PathRefused(f"http input refused: {exc}") from exc
    host = (parts.hostname or "").lower()
    if host not in {h.lower() for h in media.http_hosts}:
        raise PathRefused(f"host {host[:200]!r} is not on this node's http allow-list")
    return parts


async def _connect(parts: SplitResult, media: MediaSettings) -> Response:
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    address = await vetted_address(host, port, media)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        return await open_get(
            address, port, host=host, target=target, tls=tls,
            connect_timeout=media.http_connect_timeout,
        )  # fmt: skip
    except (OSError, TimeoutError, HttpProtocolError) as exc:
        raise _Retryable(f"{host}: {exc or type(exc).__name__}") from exc


async def vetted_address(host: str, port: int, media: MediaSettings) -> str:
    """The address to connect to; PathRefused if any resolved address is not public."""
    try:
        return await vet_address(host, port, allow_private=media.http_allow_private)
    except Refused as exc:
        raise PathRefused(str(exc)) from exc
    except Unresolvable as exc:
        raise _Retryable(str(exc)) from exc


async def _save(resp: Response, dest: Path, media: MediaSettings) -> int:
    async with aiofiles.open(dest, "wb") as f:

        async def sink(data: bytes) -> None:
            try:
                await f.write(data)
            except OSError as exc:  # our disk, not the server: no retry would help now
                kind = ResourceExhausted if exc.errno == errno.ENOSPC else JobError
                raise kind(f"cannot write the download: {exc.strerror}") from exc

        try:
            return await stream_body(
                resp, sink, max_bytes=media.max_input_bytes, read_timeout=media.http_read_timeout
            )
        except BodyRefused as exc:
            raise InputError(f"http input refused: {exc}") from exc
        except (OSError, TimeoutError, HttpProtocolError) as exc:
            raise _Retryable(f"download broke off: {exc or type(exc).__name__}") from exc


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
