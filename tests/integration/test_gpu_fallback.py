"""Hardware paths on real ffmpeg, on any machine: an NVENC run placed on a GPU that does not
exist (index 99) fails for real, here and on a GPU box alike, so the fallback, its note and the
encoder-health count are exercised; a device without free sessions is skipped, not counted."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.errors import EncoderError
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from daemon.ops.devices import Device, DeviceLedger, NoDevice
from schemas.jobs import JobSpec, Requirements
from schemas.operations import Operation, Package, Rung, Transcode

NOWHERE = Device("nvenc", 99, None, 2, frozenset({"h264_nvenc"}))
SOFT = frozenset({"libx264", "aac"})


async def _quiet(_: ProgressUpdate) -> None:
    return None


def _ctx(tools: FfmpegTools, tmp: Path, src: Path, op: Operation, out: Path,
         ledger: DeviceLedger, **req: str) -> tuple[JobContext, list[list[str]]]:  # fmt: skip
    spec = JobSpec(job_id="g1", input=src.as_uri(), output=out.as_uri(), operation=op,
                   requirements=Requirements(**req))  # type: ignore[arg-type]  # fmt: skip
    commands: list[list[str]] = []

    async def seen(_: str | None, argv: list[str]) -> None:
        commands.append(argv)

    (tmp / "scratch").mkdir(exist_ok=True)
    ctx = JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=tmp / "scratch", tools=tools,
        verified_encoders=SOFT | {"h264_nvenc"}, hwaccels=frozenset({"cuda"}), threads=2,
        allowed_roots=[src.parent, tmp], progress=_quiet, on_command=seen, devices=ledger,
        filters=frozenset({"scale_cuda"}), cuda_gpus=1,
    )  # fmt: skip
    return ctx, commands


LADDER = Package(ladder=[Rung(height=240, bitrate_kbps=400), Rung(height=120, bitrate_kbps=150)],
                 segment_seconds=1.0)  # fmt: skip


async def test_a_failing_nvenc_ladder_falls_back_to_x264_and_is_counted(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    ledger = DeviceLedger([NOWHERE])
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, clip, LADDER, tmp_path / "pkg", ledger,
                         pool="nvenc")  # fmt: skip
    result = await run_operation(ctx)
    assert result.encoder == "libx264"
    cuda_note, nvenc_note = result.notes
    assert cuda_note.startswith("decode and scaling on the GPU failed")
    assert nvenc_note.startswith("h264_nvenc failed")
    [failure] = ctx.encoder_failures  # the CPU-scaled NVENC run's failure, counted once
    assert isinstance(failure, EncoderError) and failure.encoder == "h264_nvenc"
    on_gpu, cpu_scaled, x264 = commands
    assert on_gpu[on_gpu.index("-hwaccel_device") + 1] == "99"
    assert "scale_cuda=320:240:format=yuv420p" in on_gpu[on_gpu.index("-filter_complex") + 1]
    assert on_gpu[on_gpu.index("-gpu") + 1] == cpu_scaled[cpu_scaled.index("-gpu") + 1] == "99"
    assert "-hwaccel" not in cpu_scaled and "scale=-2:240" in " ".join(cpu_scaled)
    assert "-gpu" not in x264 and "libx264" in x264
    assert ledger.free(NOWHERE) == 2  # the sessions went back


async def test_a_ladder_wider_than_the_gpus_sessions_is_skipped_not_counted(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path
) -> None:
    three = Package(ladder=[*LADDER.ladder, Rung(height=60, bitrate_kbps=100)], segment_seconds=1.0)
    ledger = DeviceLedger([NOWHERE])
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, clip, three, tmp_path / "pkg", ledger,
                         pool="nvenc")  # fmt: skip
    result = await run_operation(ctx)
    assert result.encoder == "libx264" and ctx.encoder_failures == []
    assert result.notes == ["nvenc skipped (no nvenc device has 3 free session(s) for "
                            "h264_nvenc); used software"]  # fmt: skip
    assert len(commands) == 1


async def test_a_transcode_is_pinned_and_a_busy_gpu_under_accel_nvenc_retries(
    ffmpeg_tools: FfmpegTools, clip_small: Path, tmp_path: Path
) -> None:
    op = Transcode(preset="ultrafast")
    ledger = DeviceLedger([NOWHERE])
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, clip_small, op, tmp_path / "o.mp4", ledger)
    result = await run_operation(ctx)
    assert result.encoder == "libx264" and [f.encoder for f in ctx.encoder_failures] == [
        "h264_nvenc"
    ]
    assert commands[0][commands[0].index("-gpu") + 1] == "99"
    assert ledger.place("nvenc", {"h264_nvenc"}, 2) is not None  # now the GPU is full
    ctx, commands = _ctx(ffmpeg_tools, tmp_path, clip_small, op, tmp_path / "p.mp4", ledger,
                         accel="nvenc")  # fmt: skip
    with pytest.raises(NoDevice) as busy:
        await run_operation(ctx)
    assert busy.value.kind == "transient" and commands == [] and ctx.encoder_failures == []
