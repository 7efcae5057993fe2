"""Building blocks shared by every wire type: the versioned base struct and constrained scalars."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

#: Version of the wire contract carried in every message as `v`. Decoders reject any other value.
WIRE_VERSION: Literal[1] = 1

#: Subject-safe token: job ids, node ids, pools and tenants become NATS subject tokens.
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$", max_length=128)]
#: A tenant token, or "" where the sender predates the field (the receiver then looks it up).
TenantOrBlank = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,128}$", max_length=128)]
NodeId = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$", max_length=63)]
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

#: Regex of each URI field type -> the schemes it allows, for readable decode errors
#: (schemas.codec turns msgspec's "expected `str` matching regex ..." into them).
URI_SCHEMES: dict[str, tuple[str, ...]] = {}


def scheme_pattern(*schemes: str) -> str:
    """A regex for a URI that starts with one of `schemes` (case-insensitive, as RFC 3986 says).

    Spelled with character classes, not a flag: the pattern goes into the JSON Schema export,
    whose regex dialect (ECMA-262) has no inline flags. `file` needs only `file:/` (the daemon
    reads `file:/p`, `file:///p` and `file://localhost/p`); `canary` only its colon; the others
    need `://` and a first character of the authority.
    """
    alts = []
    for scheme in schemes:
        letters = "".join(f"[{c.upper()}{c}]" if c.isalpha() else c for c in scheme)
        tail = {"file": ":/", "canary": ":"}.get(scheme, "://[^/?#]")
        alts.append(letters + tail)
    pattern = f"^({'|'.join(alts)})"
    URI_SCHEMES[pattern] = schemes
    return pattern


def _uri(*schemes: str, description: str, max_length: int = 4096) -> msgspec.Meta:
    return msgspec.Meta(
        min_length=1, max_length=max_length, pattern=scheme_pattern(*schemes),
        description=description,
    )  # fmt: skip


#: Media the daemon reads (analyze's reference): what daemon.media.access can open.
MediaUri = Annotated[
    str,
    _uri(
        "file",
        "http",
        "https",
        "nats-obj",
        "s3",
        description="file:, http(s)://, nats-obj:// or s3:// URI",
    ),
]
#: A job's input: media the daemon reads, or `canary:` for the control plane's canary jobs.
InputUri = Annotated[
    str,
    _uri(
        "file", "http", "https", "nats-obj", "s3", "canary",
        description="file:, http(s)://, nats-obj:// or s3:// URI (canary: for canary jobs only)",
    ),
]  # fmt: skip
#: A job's output: what the daemon can write. http(s) only as a presigned PUT URL to a host the
#: node allows (one file); s3 and nats-obj only to buckets the node allows.
OutputUri = Annotated[
    str,
    _uri(
        "file",
        "nats-obj",
        "s3",
        "https",
        "http",
        description="file:, nats-obj://, s3:// or a presigned https:// PUT URL",
    ),
]
#: Where the control plane POSTs the job's end (a signed webhook).
CallbackUrl = Annotated[
    str, _uri("http", "https", description="http(s):// URL of the job-end webhook", max_length=2048)
]


class Wire(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=False):
    """Base of every top-level message: versioned, strict about unknown fields."""

    v: Literal[1] = WIRE_VERSION


class Part(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base of nested structs: strict, unversioned (the enclosing message carries `v`)."""


#: What a node speaks, beyond `v`: each revision adds fields, so a reader knows which to expect.
#: 1: the first release (absent means 1). 2: a job is named by (tenant, job_id): job events name
#: the tenant, heartbeats `running_tenants`, commands may name `tenant`.
PROTOCOL = 2


class Report(Wire, kw_only=True, forbid_unknown_fields=False):
    """Base of what nodes report and are told (events, node records, commands and replies).

    A reader ignores fields it does not know, so a node (or control plane) of a newer minor
    release, which only adds fields, cannot break the fleet for the others during a rolling
    upgrade. What producers send (jobs, API requests) stays strict: a typo there is refused.
    """


class ReportPart(Part, kw_only=True, forbid_unknown_fields=False):
    """Nested in a Report: as lenient (see Report)."""
