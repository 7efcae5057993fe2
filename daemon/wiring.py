"""The daemon's back end, in one place: journal + recovery, probe, NATS, outbox, operations.

Everything here adapts a parallel helper's module (journal, outbox, probe, ops) to the small
interfaces the core uses (`reporter.JournalPort`/`OutboxPort`, `job.deps.ContextFactory`), so a
changed signature is fixed in this file alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from nats.aio.client import Client
from nats.js import JetStreamContext

from common.natsconn import connect_with_retry
from common.version import VERSION
from daemon.config import DaemonConfig
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools, find_tools
from daemon.job.deps import ContextFactory
from daemon.job.handle import JobHandle
from daemon.job.partials import remove_stale_partials
from daemon.job.run import JOB_DECODER
from daemon.job.watch import progress_event
from daemon.journal.outbox import OutboxPublisher
from daemon.journal.store import Journal
from daemon.media.access import MediaAccess
from daemon.ops.context import CommandSink, JobContext
from daemon.ops.devices import DeviceLedger, devices_of
from daemon.probe import RenderNode, probe_node, render_nodes, reverify
from daemon.probe.gpu import Nvml
from schemas.codec import DecodeError
from schemas.jobs import JobSpec
from schemas.nodes import GpuLoad, NodeCapabilities
from schemas.subjects import Subjects

log = logging.getLogger("flotilla.daemon")


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


@dataclass
class Backend:
    nc: Client
    js: JetStreamContext
    caps: NodeCapabilities
    outbox: OutboxPublisher
    new_context: ContextFactory
    raw_journal: Journal
    nvml: Nvml
    tools: FfmpegTools
    dri: list[RenderNode]

    def outbox_depth(self) -> int:
        return self.raw_journal.depth

    async def gpu_loads(self) -> list[GpuLoad]:
        return await self.nvml.loads()

    async def reverify(self, encoder: str) -> str | None:
        return await reverify(self.tools.ffmpeg, encoder, self.caps.gpus, self.dri)

    async def close(self) -> None:
        await self.nc.close()
        await self.raw_journal.close()
        await self.nvml.close()


async def open_backend(
    cfg: DaemonConfig,
    subjects: Subjects,
    *,
    on_closed: Callable[[], Awaitable[None]],
    caps: NodeCapabilities | None = None,
) -> Backend:
    """`caps` given: advertise them instead of probing this machine (`flotilla sim` runs many
    nodes in one process, and a probe per node would test-encode a thousand times)."""
    # Nothing runs before start, so every scratch dir left in work_dir is an interrupted job's.
    await asyncio.to_thread(shutil.rmtree, cfg.work_dir, True)
    await asyncio.to_thread(cfg.work_dir.mkdir, parents=True, exist_ok=True)
    journal = await Journal.for_config(cfg)
    # recover() records each interrupted attempt with its `interrupted` event (to the outbox).
    for row in await journal.recover(cfg.node_id):
        for path in row.temp_paths:  # partial outputs: never left behind by a crash
            await asyncio.to_thread(_unlink, path)
        if row.spec:
            with contextlib.suppress(DecodeError):
                spec = JOB_DECODER.decode(row.spec)
                await remove_stale_partials(spec, cfg.allowed_roots)
    tools = find_tools(cfg.ffmpeg, cfg.ffprobe)
    nvml = await Nvml.open()
    if caps is None:
        caps = await probe_node(cfg, tools.ffmpeg, VERSION, nvml=nvml)
    nc = await connect_with_retry(
        cfg.nats,
        name=f"flotilla-daemon/{cfg.node_id}",
        inbox_prefix=f"_INBOX_{cfg.node_id}",
        on_closed=on_closed,
    )
    js = nc.jetstream(timeout=5)
    outbox = OutboxPublisher(journal, js)
    # Input limits, http(s) fetching and nats-obj:// storage, as configured at start.
    media = MediaAccess.for_config(cfg, js)
    # Sessions per GPU / render node: where each hardware encode runs (daemon.ops.devices).
    devices = DeviceLedger(devices_of(caps, cfg.gpu_memory_per_job_mb))
    filters = frozenset(caps.ffmpeg.filters)

    def new_context(
        handle: JobHandle,
        spec: JobSpec,
        scratch: Path,
        *,
        withdrawn: frozenset[str],
        on_command: CommandSink,
    ) -> JobContext:
        async def progress(update: ProgressUpdate) -> None:
            handle.last_progress = update
            await journal.record([], [progress_event(cfg.node_id, handle, update)])

        return JobContext(
            handle=handle, spec=spec, scratch=scratch, tools=tools,
            verified_encoders=frozenset(caps.verified_encoders),
            hwaccels=frozenset(caps.hwaccels), threads=cfg.threads_per_job,
            allowed_roots=[Path(r) for r in cfg.allowed_roots], progress=progress,
            progress_interval=cfg.progress_interval, withdrawn_encoders=withdrawn,
            on_command=on_command, media=media, devices=devices, filters=filters,
            cuda_gpus=len(caps.gpus),
        )  # fmt: skip

    return Backend(nc, js, caps, outbox, new_context, journal, nvml, tools, await render_nodes())
