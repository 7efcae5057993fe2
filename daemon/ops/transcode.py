"""The transcode operation: probe, choose an encoder, encode (falling back along the chain), commit.

A hardware encoder that fails to open or run (EncoderError) hands the attempt to the next encoder
in the chain at once, noted in JobResult.notes and recorded in ctx.encoder_failures for encoder
health; any other failure ends the attempt. A QSV encode that decoded with a QSV decoder and
failed is first run once more decoded in software (noted): unlike the cuda and vaapi hwaccels,
a QSV decoder does not hand a stream it cannot decode back to software by itself. The output
appears under its final name only after ffmpeg succeeded (daemon.ops.outputs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import msgspec

from daemon.errors import EncoderError, InvalidJob, JobError, JobTimeout, ResourceExhausted
from daemon.ffmpeg.run import ffmpeg_argv, run_ffmpeg
from daemon.media.access import local_input, open_input, output_path, probe_input
from daemon.ops.beside import stop
from daemon.ops.context import JobContext
from daemon.ops.devices import NoDevice, Placement, placed
from daemon.ops.encoders import encoder_chain, family_of, needs_two_runs
from daemon.ops.loudness import measure_input, measure_output, spans
from daemon.ops.outputs import OutputSet
from daemon.ops.subtitles import BURN_FILTER, Subtitles, cut_args, has_cues
from daemon.ops.transcode_args import (
    AUDIO_ENCODERS,
    ENCODER_ENV,
    Node,
    qsv_decoder,
    transcode_args,
)
from daemon.ops.transcode_plan import Plan, allowed_encoders, blind_plan, open_overlay, plan
from daemon.probe.gpu import CUDA_ENV
from schemas.operations import Transcode
from schemas.results import JobResult, LoudnessReport, OutputFile, ProbeInfo

log = logging.getLogger("flotilla.transcode")


async def run(ctx: JobContext, op: Transcode) -> JobResult:
    started = time.monotonic()
    spec = ctx.spec
    assert spec.output is not None  # JobSpec requires it for transcode
    dest = await output_path(ctx, spec.output)
    if op.video_codec == "none":  # audio only: one run, named for its audio encoder
        chain = [AUDIO_ENCODERS.get(op.settled_audio, "copy")]
    else:
        chain = encoder_chain(op.video_codec, spec.requirements.accel, ctx.usable_encoders())
        chain = allowed_encoders(op, chain)
    _check_audio_encoder(op, ctx)
    if op.burn_subtitles is not None and BURN_FILTER not in ctx.filters:
        # The requirement check hands such jobs on first (schemas.encoderneeds).
        raise InvalidJob(f"this node's ffmpeg has no `{BURN_FILTER}` filter (libass): it "
                         "cannot burn subtitles in")  # fmt: skip
    # One software encoder: a hardware run is placed on a device and may fall back, after
    # the probe (below).
    one_soft = len(chain) == 1 and family_of(chain[0]) == "software"
    blind = blind_plan(op) if one_soft else None
    if blind is not None:
        return await _run_beside_probe(ctx, op, chain[0], dest, blind, started)
    src, info = await open_input(ctx, spec.input)  # limits are checked before any encode
    if src == dest:
        raise InvalidJob("output is the same file as the input")
    settled = replace(plan(op, info), overlay=await open_overlay(ctx, op))
    loudness = None
    if op.loudness is not None:  # pass 1 before any output is staged: it writes none
        measure, encode, check = spans(op.video_codec != "none")
        loudness = await measure_input(ctx, op, src, info, duration_s=settled.duration_s,
                                       span=measure, encoder=chain[0])  # fmt: skip
        settled = replace(settled, audio_filters=loudness.filters, span=encode,
                          notes=settled.notes + loudness.notes)  # fmt: skip
    notes: list[str] = list(settled.notes)
    report: list[LoudnessReport] = []
    if op.start_seconds and settled.subtitles.keep:
        cut = await _cut_subtitles(ctx, src, settled.subtitles, op.start_seconds, notes)
        settled = replace(settled, subtitles=cut)
    async with OutputSet(ctx.job_key, ctx.attempt, ctx.may_commit) as outputs:
        partial = await outputs.stage(dest, uri=spec.output)
        encoder = await _with_fallback(ctx, op, chain, src, partial, settled, notes)
        if loudness is not None:
            report, overshot = await measure_output(
                ctx, op, partial, loudness, duration_s=settled.duration_s, span=check
            )
            notes += overshot
        ctx.handle.check()  # a cancel that raced the last frame still wins
        files = await outputs.commit()
    return _result(started, settled, info, encoder, files, notes, report)


def _result(
    started: float,
    settled: Plan,
    info: ProbeInfo,
    encoder: str,
    files: list[OutputFile],
    notes: list[str],
    report: list[LoudnessReport],
) -> JobResult:
    wall = time.monotonic() - started
    media = settled.duration_s
    return JobResult(
        wall_seconds=wall,
        media_seconds=media,
        realtime_factor=round(media / wall, 3) if media and wall > 0 else None,
        encoder=encoder,
        input_size_bytes=info.size_bytes,
        outputs=files,
        notes=notes,
        loudness=report,
    )


async def _run_beside_probe(
    ctx: JobContext, op: Transcode, encoder: str, dest: Path, blind: Plan, started: float
) -> JobResult:
    """A transcode started on a plan guessed before its probe ends (daemon.ops.transcode_plan
    .blind_plan): the encode runs while the input is probed, which takes a job's fixed cost
    (the probe, about 25 ms) off its path. The probe still decides: a refusal (limits, no such
    stream, a crop outside the picture) stops the encode and fails the job as before, and a
    settled plan whose command differs from the guessed one (a 10-bit or HDR input, subtitles
    to keep) stops it and encodes again on the settled plan, as if nothing had run."""
    spec = ctx.spec
    src, size = await local_input(ctx, spec.input)
    if src == dest:
        raise InvalidJob("output is the same file as the input")
    probing: asyncio.Task[ProbeInfo] | None = None
    try:
        async with OutputSet(ctx.job_key, ctx.attempt, ctx.may_commit) as outputs:
            partial = await outputs.stage(dest, uri=spec.output)
            learnt: list[float | None] = []  # the settled duration, for progress once known

            def duration() -> float | None:
                return learnt[0] if learnt else None

            # The encode's task first: its spawn, not the probe's, should come first.
            encode = asyncio.create_task(
                _encode(ctx, op, encoder, src, partial, blind, duration=duration)
            )
            probing = asyncio.create_task(probe_input(ctx, src, size, spec.input))
            try:
                info = await probing
                settled = plan(op, info)
            except BaseException:
                await stop(encode)
                raise
            learnt.append(settled.duration_s)
            notes = list(settled.notes)
            node = _node(ctx)
            same = _args(ctx, op, encoder, src, partial, settled, node) == _args(
                ctx, op, encoder, src, partial, blind, node
            )
            if same:
                await _counted(ctx, op, encode)
            else:  # what the guessed run did, failures included, does not count
                await stop(encode)
                if op.start_seconds and settled.subtitles.keep:
                    cut = await _cut_subtitles(ctx, src, settled.subtitles, op.start_seconds,
                                               notes)  # fmt: skip
                    settled = replace(settled, subtitles=cut)
                await _counted(ctx, op, _encode(ctx, op, encoder, src, partial, settled))
            ctx.handle.check()  # a cancel that raced the last frame still wins
            files = await outputs.commit()
    finally:
        if probing is not None:
            await stop(probing)
    return _result(started, settled, info, encoder, files, notes, [])


async def _counted(ctx: JobContext, op: Transcode, run: Awaitable[None]) -> None:
    """Run a video encode, its encoder's failure recorded for encoder health (as the chain
    does: the job's last encoder is counted too)."""
    try:
        await run
    except EncoderError as exc:
        if op.video_codec != "none":
            ctx.encoder_failures.append(exc)
        raise


def _check_audio_encoder(op: Transcode, ctx: JobContext) -> None:
    name = AUDIO_ENCODERS.get(op.settled_audio)
    if name is not None and op.audio_stream is not None and name not in ctx.usable_encoders():
        raise InvalidJob(f"no verified {op.settled_audio} audio encoder on this node")


async def _cut_subtitles(
    ctx: JobContext, src: Path, subs: Subtitles, start: float, notes: list[str]
) -> Subtitles:
    """The kept tracks from `start` on, in scratch (daemon.ops.subtitles.cut_args); a track with
    no cue left is noted and left out (an empty subtitle input fails the encode)."""
    args, cut = cut_args(src, subs, ctx.scratch, start, ctx.media.guard())
    await run_ffmpeg(ctx.tools.ffmpeg, args, control=ctx.handle)
    kept = []
    for track in cut.keep:
        assert track.file is not None
        if await asyncio.to_thread(has_cues, track.file):
            kept.append(track)
        else:
            lang = f" ({track.language})" if track.language else ""
            notes.append(f"subtitle stream #{track.index}{lang} left out: no cue starts after "
                         "`start_seconds`")  # fmt: skip
    return replace(cut, keep=tuple(kept))


async def _with_fallback(
    ctx: JobContext,
    op: Transcode,
    chain: list[str],
    src: Path,
    partial: Path,
    settled: Plan,
    notes: list[str],
) -> str:
    for i, encoder in enumerate(chain):
        try:
            with placed(ctx.devices, family_of(encoder), {encoder}) as placement:
                await _encode_decoding_in_software_on_failure(
                    ctx, op, encoder, src, partial, settled, placement, notes
                )
            return encoder
        except NoDevice as exc:  # busy, not broken: not counted against the encoder
            if i + 1 == len(chain):
                raise
            notes.append(f"{encoder} skipped ({exc.reason}); used {chain[i + 1]}")
        except EncoderError as exc:
            ctx.encoder_failures.append(exc)
            if i + 1 == len(chain):
                raise
            notes.append(f"{encoder} failed ({exc.reason[:200]}); fell back to {chain[i + 1]}")
            log.warning("%s failed, falling back to %s: %s", encoder, chain[i + 1], exc.reason)
    raise AssertionError("unreachable: the chain is never empty")


async def _encode_decoding_in_software_on_failure(
    ctx: JobContext,
    op: Transcode,
    encoder: str,
    src: Path,
    partial: Path,
    settled: Plan,
    placement: Placement | None,
    notes: list[str],
) -> None:
    """The encode; where it decoded with a QSV decoder and failed (other than by a timeout, the
    host's resources or a refusal), the same encode once more decoded in software, as the
    package operation does after a failed decode on the GPU: a decoder that cannot open
    can read as an encoder that cannot (ffmpeg opens the encoder on the first decoded frame).
    Only the second run's failure counts against the encoder."""
    decoder = qsv_decoder(op, family_of(encoder), ctx.hwaccels, _codec(settled))
    if decoder is None:
        return await _encode(ctx, op, encoder, src, partial, settled, placement)
    try:
        return await _encode(ctx, op, encoder, src, partial, settled, placement)
    except (JobTimeout, ResourceExhausted, InvalidJob):
        raise
    except JobError as exc:
        notes.append(f"decode on the device ({decoder}) failed ({exc.reason[:200]}); "
                     "decoded in software")  # fmt: skip
        log.warning("%s with %s decode failed, decoding in software: %s", encoder, decoder,
                    exc.reason)  # fmt: skip
    soft = msgspec.structs.replace(op, hw_decode=False)
    await _encode(ctx, soft, encoder, src, partial, settled, placement)


async def _encode(
    ctx: JobContext,
    op: Transcode,
    encoder: str,
    src: Path,
    partial: Path,
    settled: Plan,
    placement: Placement | None = None,
    duration: Callable[[], float | None] | None = None,
) -> None:
    """`duration`: asked at each progress update, for a run started before the probe ended."""
    node = _node(ctx, placement)
    passes: tuple[int | None, ...] = (1, 2) if needs_two_runs(encoder, op) else (None,)
    for n, pass_no in enumerate(passes):
        dest = None if pass_no == 1 else partial
        args = _args(ctx, op, encoder, src, dest, settled, node, pass_no)
        if ctx.on_command is not None:
            await ctx.on_command(encoder, ffmpeg_argv(ctx.tools.ffmpeg, args))
        low, high = settled.span
        share = (high - low) / len(passes)
        await run_ffmpeg(
            ctx.tools.ffmpeg,
            args,
            control=ctx.handle,
            on_progress=ctx.progress,
            duration_s=settled.duration_s if duration is None else duration,
            span=(low + share * n, low + share * (n + 1)),
            progress_interval=ctx.progress_interval,
            encoder=encoder if op.video_codec != "none" else None,  # health counts video ones
            env=ENCODER_ENV.get(encoder, CUDA_ENV),
        )


def _node(ctx: JobContext, placement: Placement | None = None) -> Node:
    path = placement.device.path if placement is not None else None
    gpu = placement.gpu if placement is not None else None
    return Node(threads=ctx.threads, hwaccels=ctx.hwaccels, render_node=path or ctx.render_node,
                gpu=gpu, input_guard=ctx.media.guard())  # fmt: skip


def _args(
    ctx: JobContext,
    op: Transcode,
    encoder: str,
    src: Path,
    dest: Path | None,
    settled: Plan,
    node: Node,
    pass_no: int | None = None,
) -> list[str]:
    return transcode_args(
        op, encoder, src, dest, node,
        ten_bit=settled.ten_bit, pass_no=pass_no, passlog=ctx.scratch / f"passlog-{encoder}",
        overlay=settled.overlay, colour=settled.colour, audio_filters=settled.audio_filters,
        subtitles=settled.subtitles, src_codec=_codec(settled),
    )  # fmt: skip


def _codec(settled: Plan) -> str | None:
    return settled.video.codec if settled.video is not None else None
