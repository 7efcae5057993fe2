"""Encode and decode wire messages: one typed decoder per subject family, errors as values."""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar

import msgspec

from schemas.common import URI_SCHEMES, WIRE_VERSION

T = TypeVar("T")

#: Largest message a decoder accepts by default; job specs and events are a few KiB at most.
MAX_MESSAGE_BYTES = 256 * 1024
#: Largest event: an `accepted` event carries a whole job spec, and then its own fields.
MAX_EVENT_BYTES = 2 * MAX_MESSAGE_BYTES


class DecodeError(ValueError):
    """A message that cannot be accepted: malformed, truncated, oversized or the wrong version."""

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(f"invalid {type_name}: {reason}")
        self.type_name = type_name
        self.reason = reason


class Decoder(Generic[T]):
    """A JSON decoder for one wire type, built once and reused."""

    def __init__(
        self, tp: Any, name: str | None = None, *, max_bytes: int = MAX_MESSAGE_BYTES
    ) -> None:
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(tp)
        self.name: str = name or str(getattr(tp, "__name__", "message"))
        self.max_bytes = max_bytes

    def decode(self, data: bytes | bytearray | memoryview | str) -> T:
        if len(data) > self.max_bytes:
            raise DecodeError(self.name, f"{len(data)} bytes is over the {self.max_bytes} limit")
        try:
            return self._decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise DecodeError(self.name, _explain(str(exc), data)) from exc
        except msgspec.DecodeError as exc:
            raise DecodeError(self.name, f"malformed JSON ({exc})") from exc


_REGEX_MISS = re.compile(r"^Expected `str` matching regex '(?P<rx>.*)' - at `(?P<at>[^`]*)`$")


def _explain(message: str, data: bytes | bytearray | memoryview | str) -> str:
    """Name the version or URI scheme problem plainly when it is one; msgspec's message else."""
    miss = _REGEX_MISS.match(message)
    if miss is not None and miss["rx"] in URI_SCHEMES:
        starts = (s + {"file": ":/", "canary": ":"}.get(s, "://") for s in URI_SCHEMES[miss["rx"]])
        return f"expected a URI starting with {', '.join(starts)} - at `{miss['at']}`"
    if "`$.v`" in message:
        try:
            seen = msgspec.json.decode(data).get("v")
        except (msgspec.DecodeError, AttributeError):
            seen = None
        return f"unsupported schema version {seen!r} (this build speaks v{WIRE_VERSION})"
    return message


_encoder = msgspec.json.Encoder()


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def to_builtins(message: msgspec.Struct) -> Any:
    return msgspec.to_builtins(message)
