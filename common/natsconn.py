"""Connect to NATS the way a long-running service must: reconnect forever, notice dead links."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
import nats
from nats.aio.client import Client

log = logging.getLogger("flotilla.nats")


class NatsSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    #: NATS server URL(s), comma-separated; the client reconnects forever.
    url: str = "nats://127.0.0.1:4222"
    #: NATS credentials (.creds) file: the per-node user and its permissions.
    credentials: str | None = None
    #: NKey seed file, for NKey authentication instead of a credentials file.
    nkey_seed: str | None = None
    #: User name for user/password authentication.
    user: str | None = None
    #: Password for `user`.
    password: str | None = None
    #: CA bundle that verifies the server; setting it (or `tls_cert`) turns TLS on.
    tls_ca: str | None = None
    #: Client certificate for mutual TLS (with `tls_key`).
    tls_cert: str | None = None
    #: Private key of `tls_cert`.
    tls_key: str | None = None
    #: Subject prefix, and the stream names' prefix (`FLOTILLA_JOBS`); same fleet-wide.
    prefix: str = "flotilla"
    #: Partitions of the job subjects; must match the jobs stream's subject transform.
    partitions: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 8


def _tls(settings: NatsSettings) -> ssl.SSLContext | None:
    if not (settings.tls_ca or settings.tls_cert):
        return None
    ctx = ssl.create_default_context(cafile=settings.tls_ca)
    if settings.tls_cert:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx


async def connect(
    settings: NatsSettings,
    *,
    name: str,
    inbox_prefix: str | None = None,
    on_closed: Callable[[], Awaitable[None]] | None = None,
    on_reconnected: Callable[[], Awaitable[None]] | None = None,
    reconnect: bool = True,
    connect_timeout: float = 2.0,
    on_error: Callable[[Exception], None] | None = None,
) -> Client:
    """Services pass `reconnect=True` (forever); CLI calls pass False and fail fast.

    `on_error` takes the client's asynchronous errors (a refused login or publish, a lost
    server) instead of the log, which then has them at debug level only: a command that
    reports them itself, as one line, passes it.
    """
    # A command's own connection closing is no news; a service's is.
    routine = logging.WARNING if reconnect else logging.DEBUG

    async def error_cb(exc: Exception) -> None:
        if on_error is not None:
            on_error(exc)
            log.debug("nats error: %s", exc)
            return
        # Refused publishes surface only here (and as PubAck timeouts): log them loudly.
        level = logging.ERROR if "permission" in str(exc).lower() else logging.WARNING
        log.log(level, "nats error: %s", exc)

    async def disconnected_cb() -> None:
        log.log(routine, "nats disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected")
        if on_reconnected is not None:
            await on_reconnected()

    async def closed_cb() -> None:
        log.log(routine, "nats connection closed")
        if on_closed is not None:
            await on_closed()

    options: dict[str, Any] = {
        "servers": [u.strip() for u in settings.url.split(",") if u.strip()],
        "name": name,
        "connect_timeout": connect_timeout,
        "allow_reconnect": reconnect,
        # 0 would mean "forever" inside nats-py's server selection; 1 fails fast.
        "max_reconnect_attempts": -1 if reconnect else 1,
        "reconnect_time_wait": 1,
        "ping_interval": 20,
        "max_outstanding_pings": 3,
        "error_cb": error_cb,
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
        "closed_cb": closed_cb,
    }
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    if settings.credentials:
        options["user_credentials"] = settings.credentials
    if settings.nkey_seed:
        options["nkeys_seed"] = settings.nkey_seed
    if settings.user:
        options["user"] = settings.user
        options["password"] = settings.password or ""
    tls = _tls(settings)
    if tls is not None:
        options["tls"] = tls
    return await nats.connect(**options)


async def connect_with_retry(
    settings: NatsSettings, *, name: str, attempts: int | None = None, **kwargs: Any
) -> Client:
    """First connect, retried with back-off (nats-py retries only after a first success)."""
    import asyncio

    delay, n = 0.5, 0
    while True:
        n += 1
        try:
            return await connect(settings, name=name, **kwargs)
        except (TimeoutError, OSError, nats.errors.NoServersError) as exc:
            if attempts is not None and n >= attempts:
                raise
            log.warning("nats unreachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)


async def sync_subscriptions(nc: Client) -> None:
    """Return once the server has every SUB sent so far on `nc`; raises after 5 s a round trip.

    nats-py writes a flush's PING straight to the socket, ahead of a SUB still queued for its
    flusher task, so one flush() can return before the server knows the subscription (seen as
    "no responders" for a request made right after). The first round trip lets that task run;
    the second PING follows the SUB.
    """
    await nc.flush(timeout=5)
    await nc.flush(timeout=5)
