"""The CLI's side of the fleet API: one request per call, replies decoded, errors as CliErrors.

`open_nats` is every command's connection: a refused login, an unreachable server, a context
whose fleet is gone and a refused publish or subscription each become one line (a CliError)
rather than a traceback or a wait for a reply that cannot come.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout

from common.natsconn import NatsSettings, connect
from control.cli.context import Target, gone, redact, resolve, verify_context
from control.errors import BadInput, CliError, NotFound, Unreachable
from schemas import api
from schemas.codec import Decoder, encode
from schemas.subjects import Subjects

T = TypeVar("T")
API_ERROR: Decoder[api.ApiError] = Decoder(api.ApiError, "api error")
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
_LOGIN_REFUSED = ("authorization violation", "authentication", "invalid user credentials")


def _raise_for(code: int, message: str) -> None:
    if code == 404:
        raise NotFound(message)
    if code in (400, 409):
        raise BadInput(message)
    if code == 503:
        raise Unreachable(message)
    if code == 401:
        raise CliError(f"{message} (give --api-key or set FLOTILLA_API_KEY)")
    raise CliError(message)


class Refusals:
    """What the server refused on a live connection: a publish or subscription the user may
    not make. nats-py reports these only to its error callback; a waiting call raises it."""

    def __init__(self, settings: NatsSettings) -> None:
        self.settings = settings
        self.last: Exception | None = None
        self.denied: CliError | None = None
        self.event = asyncio.Event()

    def __call__(self, exc: Exception) -> None:
        self.last = exc
        text = str(exc)
        if "permissions violation" in text.lower() and self.denied is None:
            self.denied = CliError(_denied(text, self.settings))
            self.event.set()


def _who(settings: NatsSettings) -> str:
    if settings.user:
        return f"NATS user {settings.user!r}"
    if settings.credentials:
        return f"the NATS user of {settings.credentials}"
    if settings.nkey_seed:
        return f"the NKey of {settings.nkey_seed}"
    return "this NATS connection"


def _denied(text: str, settings: NatsSettings) -> str:
    detail = text.removeprefix("nats: ").strip("'")
    hint = ""
    if "subscription" in detail and "_inbox" in detail.lower():
        user = settings.user or "<user>"
        hint = f"; a user that hears only its own inbox needs --inbox-prefix _INBOX_{user}"
    return f"{_who(settings)} may not do this ({detail}){hint}"


def _login_refused(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, nats.errors.AuthorizationError) or any(
        word in text for word in _LOGIN_REFUSED
    )


def _login_hint(settings: NatsSettings) -> str:
    if settings.user:
        return "check --user/--password (FLOTILLA_NATS_USER, FLOTILLA_NATS_PASSWORD)"
    if settings.credentials:
        return f"check the credentials file {settings.credentials}"
    if settings.nkey_seed:
        return f"check the NKey seed file {settings.nkey_seed}"
    return (
        "it needs credentials: give --user/--password, --creds or --nkey "
        "(or FLOTILLA_NATS_USER/FLOTILLA_NATS_PASSWORD, FLOTILLA_NATS_CREDS, FLOTILLA_NATS_NKEY)"
    )


async def open_nats(
    target: Target, refusals: Refusals | None = None, *, connect_timeout: float = 2.0
) -> NATS:
    """Connect for one command (no reconnects) and check the context's fleet, if any."""
    settings = target.settings
    seen = refusals or Refusals(settings)
    url = redact(settings.url)
    try:
        nc = await connect(
            settings, name="flotilla-cli", reconnect=False, inbox_prefix=target.inbox_prefix,
            on_error=seen, connect_timeout=connect_timeout,
        )  # fmt: skip
    except (NoServersError, OSError, TimeoutError, nats.errors.Error) as exc:
        cause = seen.last if isinstance(exc, NoServersError) and seen.last else exc
        if _login_refused(exc) or _login_refused(cause):
            raise CliError(f"NATS at {url} refused the login: {_login_hint(settings)}") from exc
        detail = str(cause) or type(cause).__name__
        if isinstance(cause, nats.errors.Error) and not isinstance(
            cause, NoServersError | NatsTimeout
        ):
            raise CliError(f"NATS at {url}: {detail}") from exc
        if target.context is not None:
            raise gone(target.context, settings.url, detail) from exc
        raise Unreachable(f"cannot reach NATS at {url}: {detail}") from exc
    if target.context is not None:
        try:
            await verify_context(nc, target.context, settings)
        except BaseException:
            await nc.close()
            raise
    return nc


async def guarded(refusals: Refusals, work: Awaitable[T]) -> T:
    """`work`, unless the server refuses something on the connection first: then that refusal
    (a CliError) at once, rather than the timeout the refused request would end in."""
    if refusals.denied is not None:
        raise refusals.denied
    doing = asyncio.ensure_future(work)
    refused = asyncio.ensure_future(refusals.event.wait())
    try:
        await asyncio.wait({doing, refused}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for fut in (doing, refused):
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await fut
    try:
        return doing.result()
    except (asyncio.CancelledError, NatsTimeout, NoRespondersError, TimeoutError):
        if refusals.denied is not None:
            raise refusals.denied from None
        raise


class ApiClient:
    """`async with ApiClient.from_args(args) as c: reply = await c.call("job.get", req, T)`."""

    def __init__(
        self,
        settings: NatsSettings | Target,
        *,
        timeout: float = 10.0,
        api_key: str | None = None,
    ) -> None:
        self.target = settings if isinstance(settings, Target) else Target(settings)
        self.settings = self.target.settings
        self.subjects = Subjects(self.settings.prefix, self.settings.partitions)
        self.timeout = timeout
        self.api_key = api_key
        self.refusals = Refusals(self.settings)
        self._nc: NATS | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, timeout: float = 10.0) -> ApiClient:
        return cls(resolve(args), timeout=timeout, api_key=getattr(args, "api_key", None))

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("ApiClient used outside `async with`")
        return self._nc

    async def __aenter__(self) -> ApiClient:
        self._nc = await open_nats(self.target, self.refusals)
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    def check(self) -> None:
        """Raise what the server refused so far on this connection, if anything."""
        if self.refusals.denied is not None:
            raise self.refusals.denied

    async def call(self, verb: str, request: msgspec.Struct, reply_type: type[T]) -> T:
        """Send one API request; a reply carrying an error becomes the matching CliError."""
        subject = f"{self.subjects.prefix}.api.{verb}"
        headers = {api.KEY_HEADER: self.api_key} if self.api_key else None
        try:
            msg = await guarded(
                self.refusals,
                self.nc.request(subject, encode(request), timeout=self.timeout, headers=headers),
            )
        except NoRespondersError as exc:
            raise Unreachable(
                f"no control plane answers on {subject} (is `flotilla control` running?)"
            ) from exc
        except NatsTimeout as exc:
            raise Unreachable(
                f"the control plane did not answer {verb} in {self.timeout:g}s"
            ) from exc
        code = (msg.headers or {}).get(ERROR_CODE_HEADER)
        if code is not None:
            try:
                message = API_ERROR.decode(msg.data).message
            except ValueError:
                message = (msg.headers or {}).get("Nats-Service-Error", "request failed")
            _raise_for(int(code), message)
        return Decoder(reply_type, f"{verb} reply").decode(msg.data)
