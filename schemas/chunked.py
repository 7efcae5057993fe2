"""A chunked encode: one long transcode split into chunks that many nodes encode at once.

`ChunkedSpec.expand()` turns it into an ordinary workflow (schemas/workflows.py): one transcode
step per chunk (`c00`, `c01`, ...: a trim of the input, video only, CRF so quality is even
across chunks, a fixed closed GOP), one `audio` step that encodes the whole input's audio once
(.m4a), and a `join` step, a `concat` job that needs them all, joins the chunks by stream copy,
muxes the audio and verifies the result. Each step is a job of its own, so a chunk whose node is
lost is retried (or redelivered) alone.

Chunk files sit next to the output: `<stem>.c00<ext>`, ..., `<stem>.audio.m4a`; they are left
in place after the join (the join's report refers to them), for the caller to remove.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from schemas.common import CallbackUrl, MediaUri, OutputUri, Priority, Token, Wire
from schemas.jobs import Requirements, Timeouts, pool_of
from schemas.operations import (
    CONCAT_EXTENSIONS,
    AudioKbps,
    Concat,
    Crf,
    Height,
    Preset,
    Transcode,
    Width,
    output_extension,
)
from schemas.workflows import MAX_STEPS, STEP_REF, WorkflowSpec, WorkflowStep

#: Chunks one chunked encode may have: with the audio and join steps, a workflow's MAX_STEPS.
MAX_CHUNKS = MAX_STEPS - 2
#: A last piece shorter than this share of `chunk_seconds` joins the chunk before it.
MERGE_TAIL = 0.25
JOIN_STEP, AUDIO_STEP = "join", "audio"


def _software() -> Requirements:
    return Requirements(accel="software")


class ChunkedSpec(Wire, kw_only=True):
    """One long encode to split; `expand()` gives the workflow that runs it."""

    workflow_id: Token
    tenant: Token = "default"
    priority: Priority = "normal"
    input: MediaUri
    #: The joined file: .mp4, .m4v, .mov or .mkv (file://, nats-obj:// or s3://).
    output: OutputUri
    #: The input's length, which sets the chunk borders. A value a little short loses nothing:
    #: the last chunk runs to the input's end.
    duration_seconds: Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]
    chunk_seconds: Annotated[float, msgspec.Meta(ge=1, le=24 * 3600)] = 60.0
    codec: Literal["h264", "hevc"] = "h264"
    crf: Crf = 23
    preset: Preset = "medium"
    width: Width | None = None
    height: Height | None = None
    #: Frames between keyframes inside a chunk; every chunk also starts on one.
    gop_size: Annotated[int, msgspec.Meta(ge=1, le=1200)] = 48
    audio_codec: Literal["aac", "none"] = "aac"
    audio_bitrate_kbps: AudioKbps = 128
    #: Most the joined file's audio and video may end apart (the join's check).
    max_av_drift_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 100.0
    #: For the chunk encodes; the audio and join steps take only its pool and labels. Software
    #: by default: with `auto` a GPU node would encode its chunks with NVENC and a CPU node with
    #: x264, and the chunks' quality would differ at the borders.
    requirements: Requirements = msgspec.field(default_factory=_software)
    timeouts: Timeouts = msgspec.field(default_factory=Timeouts)
    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    callback_url: CallbackUrl | None = None

    def __post_init__(self) -> None:
        ext = output_extension(self.output)
        if ext not in CONCAT_EXTENSIONS:
            takes = ", ".join(f".{e}" for e in CONCAT_EXTENSIONS)
            raise ValueError(
                f"a chunked encode writes {takes}, not {'.' + ext if ext else 'no extension'}"
            )
        if urlsplit(self.output).scheme.lower() in ("http", "https"):
            raise ValueError("a chunked encode writes several files: its output must be "
                             "file://, nats-obj:// or s3://, not a signed URL")  # fmt: skip
        count = chunk_count(self.duration_seconds, self.chunk_seconds)
        if count > MAX_CHUNKS:
            least = math.ceil(self.duration_seconds / (MAX_CHUNKS + MERGE_TAIL))
            raise ValueError(f"{self.duration_seconds:g} s in {self.chunk_seconds:g} s chunks "
                             f"is {count} chunks, over the {MAX_CHUNKS} a workflow holds: use "
                             f"chunk_seconds of at least {least}")  # fmt: skip

    def borders(self) -> list[tuple[float, float | None]]:
        """(start, length) of each chunk, in seconds; the last one's length is None (to the
        input's end)."""
        count = chunk_count(self.duration_seconds, self.chunk_seconds)
        out: list[tuple[float, float | None]] = []
        for i in range(count):
            last = i == count - 1
            out.append((round(i * self.chunk_seconds, 6), None if last else self.chunk_seconds))
        return out

    def chunk_uris(self) -> list[str]:
        ext = "." + output_extension(self.output)
        return [sibling(self.output, f".c{i:02d}{ext}") for i in range(len(self.borders()))]

    def audio_uri(self) -> str | None:
        return None if self.audio_codec == "none" else sibling(self.output, ".audio.m4a")

    def expand(self) -> WorkflowSpec:
        """The workflow that runs it (ValueError, as WorkflowSpec raises, when a step is no
        valid job)."""
        chunk_uris = self.chunk_uris()
        steps: list[WorkflowStep] = []
        for i, ((start, length), uri) in enumerate(zip(self.borders(), chunk_uris, strict=True)):
            op = Transcode(
                codec=self.codec, rate_control="crf", crf=self.crf, preset=self.preset,
                width=self.width, height=self.height, audio_stream=None, audio_codec="none",
                start_seconds=start or None, duration_seconds=length, gop_size=self.gop_size,
                closed_gop=True,
            )  # fmt: skip
            steps.append(self._step(f"c{i:02d}", op, self.input, uri, self.requirements))
        names = [s.name for s in steps]
        # Audio and join need no video encoder: any node of the pool may take them.
        plain = Requirements(pool=pool_of(self.requirements), labels=self.requirements.labels)
        audio = self.audio_uri()
        if audio is not None:
            op = Transcode(codec="none", audio_codec="aac",
                           audio_bitrate_kbps=self.audio_bitrate_kbps)  # fmt: skip
            steps.append(self._step(AUDIO_STEP, op, self.input, audio, plain))
            names.append(AUDIO_STEP)
        join = Concat(chunks=chunk_uris, audio=audio, max_av_drift_ms=self.max_av_drift_ms)
        steps.append(self._step(JOIN_STEP, join, STEP_REF + names[0], self.output, plain, names))
        return WorkflowSpec(
            workflow_id=self.workflow_id, tenant=self.tenant, priority=self.priority,
            steps=steps, callback_url=self.callback_url,
        )  # fmt: skip

    def _step(
        self,
        name: str,
        op: Transcode | Concat,
        source: str,
        output: str,
        req: Requirements,
        needs: list[str] | None = None,
    ) -> WorkflowStep:
        return WorkflowStep(
            name=name, needs=needs or [], operation=op, input=source, output=output,
            requirements=req, timeouts=self.timeouts, max_attempts=self.max_attempts,
            metadata={"chunked": self.workflow_id},
        )  # fmt: skip


def chunk_count(duration: float, chunk: float) -> int:
    """Chunks of `chunk` seconds over `duration`, a tail under MERGE_TAIL of one joining the
    chunk before (so no chunk is a sliver)."""
    # Rounded first: 6.0 / 2.0 - 0.25 must not become 2.7500000001.
    return max(1, math.ceil(round(duration / chunk - MERGE_TAIL, 9)))


def sibling(uri: str, suffix: str) -> str:
    """`uri` with its last path segment's extension replaced by `suffix` (`.c00.mp4`)."""
    parts = urlsplit(uri)
    path = PurePosixPath(parts.path)
    named = str(path.with_name(path.stem + suffix))
    return urlunsplit((parts.scheme, parts.netloc, named, parts.query, parts.fragment))
