"""Connect to NATS the way a long-running service must: reconnect forever, notice dead links,
and take on rotated credentials without a restart (`apply_settings`)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import weakref
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
    nc = Client()
    if reconnect:
        _reconnect_on_auth_violation(nc)
    fingerprint = await credentials_fingerprint(settings)
    await nc.connect(**options)
    _fingerprints[nc] = fingerprint
    return nc


#: [nats] keys a running client takes on (apply_settings); `prefix` and `partitions` name
#: subjects and streams, which only a restart changes.
CONNECTION_KEYS = ("url", "credentials", "nkey_seed", "user", "password", "tls_ca", "tls_cert",
                   "tls_key")  # fmt: skip
#: What each service client last connected with (see credentials_fingerprint).
_fingerprints: weakref.WeakKeyDictionary[Client, str] = weakref.WeakKeyDictionary()


def _read(path: str | None) -> bytes:
    if not path:
        return b""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:  # apply_settings reports it when it connects
        return str(exc).encode()


def _must_read(path: str) -> None:
    with open(path, "rb"):
        pass


async def credentials_fingerprint(settings: NatsSettings) -> str:
    """A digest of the connection keys and of the files they name: a file rewritten in place
    (a rotated creds file, a renewed certificate) changes it as a changed key does."""
    files = (settings.credentials, settings.nkey_seed, settings.tls_ca, settings.tls_cert,
             settings.tls_key)  # fmt: skip
    contents = await asyncio.to_thread(lambda: [_read(f) for f in files])
    digest = hashlib.sha256()
    for key in CONNECTION_KEYS:
        digest.update(repr(getattr(settings, key)).encode() + b"\0")
    for content in contents:
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def _reconnect_on_auth_violation(nc: Client) -> None:
    """A server that stops accepting our credentials (rotated, then reloaded) says
    "Authorization Violation" on the live link, and nats-py would close for good; reconnect
    instead, as the Go client does, so a reload of our own credentials can still apply."""
    original = nc._process_err

    async def process_err(err_msg: str) -> None:
        if "authorization violation" in err_msg.lower() and nc.is_connected:
            err = nats.errors.AuthorizationError()
            await nc._error_cb(err)
            await nc._process_op_err(err)
            return
        await original(err_msg)

    nc._process_err = process_err  # type: ignore[method-assign]


async def apply_settings(nc: Client, settings: NatsSettings) -> bool:
    """Make a service client use `settings`' servers and credentials, reconnecting now; False
    (and nothing done) when neither they nor the files they name changed.

    The same client reconnects, so its subscriptions are replayed and a message received before
    still acks through it (a JetStream ack names the consumer and sequence, not the link).
    Options are read by nats-py at each connect; these are its own attributes for them
    (nats-py 2.16). A refused login is retried every second, as when the server is away.
    """
    fingerprint = await credentials_fingerprint(settings)
    if _fingerprints.get(nc) == fingerprint or nc.is_closed:
        return False
    # Read every file first: one that does not load raises here, before anything changed.
    tls = await asyncio.to_thread(_tls, settings)
    for path in (settings.credentials, settings.nkey_seed):
        if path:
            await asyncio.to_thread(_must_read, path)
    nc.set_server_pool([u.strip() for u in settings.url.split(",") if u.strip()])
    nc.options["user"] = settings.user
    nc.options["password"] = (settings.password or "") if settings.user else None
    nc._user_credentials = settings.credentials
    nc._nkeys_seed, nc._nkeys_seed_str = settings.nkey_seed, None
    nc._user_jwt_cb = nc._signature_cb = nc._public_nkey = None
    if settings.credentials or settings.nkey_seed:
        await asyncio.to_thread(nc._setup_nkeys_connect)  # reads the seed for its public key
    in_url = any(srv.uri.username or srv.uri.password for srv in nc._server_pool)
    nc._auth_configured = bool(
        settings.user or settings.credentials or settings.nkey_seed or in_url
    )
    if tls is None:
        nc.options.pop("tls", None)
    else:
        nc.options["tls"] = tls
    _fingerprints[nc] = fingerprint
    if nc.is_connected:
        await nc.force_reconnect()
    # Reconnecting already (the server refused the old credentials): its next try uses these.
    return True


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
