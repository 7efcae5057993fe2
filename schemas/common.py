"""Building blocks shared by every wire type: the versioned base struct and constrained scalars."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

#: Version of the wire contract carried in every message as `v`. Decoders reject any other value.
WIRE_VERSION: Literal[1] = 1

#: Subject-safe token: job ids, node ids, pools and tenants become NATS subject tokens.
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$", max_length=128)]
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", max_length=63)]
Uri = Annotated[str, msgspec.Meta(min_length=1, max_length=4096)]
ShortText = Annotated[str, msgspec.Meta(max_length=512)]
LongText = Annotated[str, msgspec.Meta(max_length=16384)]
Label = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:/-]{1,64}$")]
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0)]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")
Labels = dict[Label, Annotated[str, msgspec.Meta(max_length=256)]]


class Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=False):
    """Base of every top-level message: versioned, strict about unknown fields."""

    v: Literal[1] = WIRE_VERSION


class Part(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of nested structs: strict, unversioned (the enclosing message carries `v`)."""
