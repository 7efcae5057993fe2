"""The job spec a producer publishes, and the rule that derives its pool."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from schemas.common import CallbackUrl, InputUri, Labels, OutputUri, Part, Priority, Token, Wire
from schemas.operations import Canary, Concat, Operation, Probe, Transcode
from schemas.videoopts import chroma_420

Accel = Literal["auto", "software", "nvenc", "qsv", "vaapi"]
HW_POOLS: tuple[str, ...] = ("nvenc", "qsv", "vaapi")
DEFAULT_POOL = "cpu"


class Requirements(Part, kw_only=True):
    #: Pool override; by default the pool follows `accel` (see `pool_of`).
    pool: Token | None = None
    #: `auto`: best verified encoder, falling back to software; `software` forbids hardware;
    #: a family name requires that hardware encoder.
    accel: Accel = "auto"
    min_gpu_memory_mb: Annotated[int, msgspec.Meta(ge=0, le=1_048_576)] = 0
    #: The node must carry every one of these labels with the same value.
    labels: Labels = {}


class Timeouts(Part, kw_only=True):
    #: Past the soft timeout the job keeps running but is reported as slow.
    soft_seconds: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] | None = None
    #: Past the hard timeout ffmpeg is stopped and the attempt fails.
    hard_seconds: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)] = 6 * 3600.0

    def __post_init__(self) -> None:
        if self.soft_seconds is not None and self.soft_seconds > self.hard_seconds:
            raise ValueError("`soft_seconds` must not exceed `hard_seconds`")


class JobSpec(Wire, kw_only=True):
    job_id: Token
    tenant: Token = "default"
    priority: Priority = "normal"
    input: InputUri
    output: OutputUri | None = None
    operation: Operation
    requirements: Requirements = msgspec.field(default_factory=Requirements)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    deadline: datetime | None = None
    callback_url: CallbackUrl | None = None
    metadata: dict[Annotated[str, msgspec.Meta(max_length=64)], str] = {}

    def __post_init__(self) -> None:
        if self.input[:7].lower().startswith("canary:") and not isinstance(self.operation, Canary):
            raise ValueError("`input` canary: is for canary jobs only")
        needs_output = not isinstance(self.operation, Probe | Canary)
        if needs_output and self.output is None:
            raise ValueError(f"operation {self.operation_name!r} needs `output`")
        req = self.requirements
        if isinstance(self.operation, Concat):
            self.operation.check_job(self.input, self.output)
        if isinstance(self.operation, Transcode):
            if self.output is not None:
                self.operation.for_output(self.output)
            if self.operation.video_codec == "none" and req.accel in HW_POOLS:
                raise ValueError(f"an output without video needs no {req.accel} encoder: "
                                 "leave `requirements.accel` at auto or software")  # fmt: skip
            pix = self.operation.pix_fmt
            if pix is not None and not chroma_420(pix) and req.accel in HW_POOLS:
                raise ValueError(f"`pix_fmt` {pix!r} is software-only; accel {req.accel!r} "
                                 "encodes 4:2:0 (yuv420p, yuv420p10le)")  # fmt: skip
        if req.pool is not None and req.accel in HW_POOLS and req.pool != req.accel:
            raise ValueError(f"`requirements.pool` {req.pool!r} contradicts accel {req.accel!r}")

    @property
    def operation_name(self) -> str:
        return str(type(self.operation).__struct_config__.tag)

    @property
    def pool(self) -> str:
        return pool_of(self.requirements)


def pool_of(req: Requirements) -> str:
    """A job's pool: explicit, else the hardware family it requires, else `cpu`."""
    if req.pool is not None:
        return req.pool
    if req.accel in HW_POOLS:
        return req.accel
    return DEFAULT_POOL
