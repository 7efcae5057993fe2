"""What an operation gets for one attempt of a job: its handle, the spec, tools and node facts.

The handle is the job's own (daemon/job/handle.py): stop, pause and the hard timeout reach the
operation through it, never through a copy.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path

from daemon.errors import EncoderError
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.run import ffmpeg_argv
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess
from daemon.ops.devices import DeviceLedger
from daemon.ops.outputs import CommitGate, job_key
from schemas.jobs import JobSpec

__all__ = ["CommandSink", "JobContext", "JobHandle", "ProgressSink"]

ProgressSink = Callable[[ProgressUpdate], Awaitable[None]]
#: Told (encoder or None, argv) before each ffmpeg run, e.g. for the `started` event or a log.
CommandSink = Callable[[str | None, list[str]], Awaitable[None]]


@dataclass
class JobContext:
    #: Who the job is and its attempt; cancel, pause and the hard timeout (`check`, `ready`).
    handle: JobHandle
    spec: JobSpec
    #: Per-attempt scratch directory, created and removed by the caller (pass logs, downloads).
    scratch: Path
    tools: FfmpegTools
    #: Encoders (hardware and software) that passed the node's test encode.
    verified_encoders: AbstractSet[str]
    hwaccels: AbstractSet[str]
    threads: int
    allowed_roots: Sequence[Path]
    progress: ProgressSink
    #: Encoders encoder-health took out of service since the probe.
    withdrawn_encoders: AbstractSet[str] = frozenset()
    progress_interval: float = 1.0
    #: DRM render node for VAAPI/QSV (the probe's first usable one).
    render_node: str = "/dev/dri/renderD128"
    on_command: CommandSink | None = None
    #: Filled by the operation: every encoder that failed in this attempt, even when a fallback
    #: then succeeded, so encoder health can count it (JobResult.encoder names the one that worked).
    encoder_failures: list[EncoderError] = field(default_factory=list)
    #: Input limits and remote storage (http allow-list, object store); defaults: file:// only.
    media: MediaAccess = field(default_factory=MediaAccess)
    #: Sessions free per GPU / render node (daemon.ops.devices); None: no pinning, the driver's
    #: first device and `render_node`.
    devices: DeviceLedger | None = None
    #: The ffmpeg build's filters (scale_cuda, libvmaf_cuda decide the GPU paths).
    filters: AbstractSet[str] = frozenset()
    #: NVIDIA GPUs NVML found (with or without NVENC): CUDA filters are tried only where > 0.
    cuda_gpus: int = 0
    #: Asked before outputs are renamed into place (daemon.ops.outputs); None: always commit.
    may_commit: CommitGate | None = None

    @property
    def attempt(self) -> int:
        return self.handle.attempt

    @property
    def job_key(self) -> str:
        """The job's name in file names (tenant and id: daemon.ops.outputs.job_key)."""
        return job_key(self.spec.tenant, self.spec.job_id)

    async def announce(self, encoder: str | None, args: Sequence[str]) -> None:
        """Tell `on_command` about the ffmpeg run about to start; call it before each run, so
        that the job's `started` event (sent on the first) precedes its progress events."""
        if self.on_command is not None:
            await self.on_command(encoder, ffmpeg_argv(self.tools.ffmpeg, args))

    def usable_encoders(self) -> AbstractSet[str]:
        return self.verified_encoders - self.withdrawn_encoders
