"""The CLI's side of the fleet API: one request per call, replies decoded, errors as CliErrors."""

from __future__ import annotations

import argparse
from types import TracebackType
from typing import TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeout

from common.natsconn import NatsSettings, connect
from control.api.tenants import KEY_HEADER
from control.cli.context import nats_settings
from control.errors import BadInput, CliError, NotFound, Unreachable
from schemas import api
from schemas.codec import Decoder, encode
from schemas.subjects import Subjects

T = TypeVar("T")
API_ERROR: Decoder[api.ApiError] = Decoder(api.ApiError, "api error")
ERROR_CODE_HEADER = "Nats-Service-Error-Code"


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


class ApiClient:
    """`async with ApiClient.from_args(args) as c: reply = await c.call("job.get", req, T)`."""

    def __init__(
        self, settings: NatsSettings, *, timeout: float = 10.0, api_key: str | None = None
    ) -> None:
        self.settings = settings
        self.subjects = Subjects(settings.prefix, settings.partitions)
        self.timeout = timeout
        self.api_key = api_key
        self._nc: NATS | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, timeout: float = 10.0) -> ApiClient:
        return cls(nats_settings(args), timeout=timeout, api_key=getattr(args, "api_key", None))

    @property
    def nc(self) -> NATS:
        if self._nc is None:
            raise RuntimeError("ApiClient used outside `async with`")
        return self._nc

    async def __aenter__(self) -> ApiClient:
        try:
            self._nc = await connect(self.settings, name="flotilla-cli", reconnect=False)
        except (NoServersError, OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach NATS at {self.settings.url}: {exc}") from exc
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None

    async def call(self, verb: str, request: msgspec.Struct, reply_type: type[T]) -> T:
        """Send one API request; a reply carrying an error becomes the matching CliError."""
        subject = f"{self.subjects.prefix}.api.{verb}"
        headers = {KEY_HEADER: self.api_key} if self.api_key else None
        try:
            msg = await self.nc.request(
                subject, encode(request), timeout=self.timeout, headers=headers
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
