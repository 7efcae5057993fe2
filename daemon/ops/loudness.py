"""Two-pass EBU R128 loudness normalisation of a transcode's audio (ffmpeg's `loudnorm`).

Pass 1 measures every kept audio track in one ffmpeg run (audio decoded only, into the null
muxer); the encode applies `loudnorm` in linear mode with those measurements, one filter per
track, then resamples to the source's rate (or the asked one: dynamic `loudnorm` runs at
192 kHz); a last run measures the output for the result. Each `loudnorm` prints its measurement
as a JSON block after a `[Parsed_loudnorm_N @ …]` line when the run ends: the blocks are read
from every stderr line, since several tracks outgrow the error tail.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from daemon.errors import JobError
from daemon.ffmpeg.run import run_ffmpeg
from daemon.media.paths import ffmpeg_arg
from daemon.ops.context import JobContext
from schemas.audioopts import Loudness
from schemas.operations import Transcode
from schemas.results import LoudnessReport, ProbeInfo

_MARKER = re.compile(r"\[Parsed_loudnorm_(\d+) @ ")
#: An input audio stream with a language in the banner: `Stream #0:2(fra): Audio: …`.
_TAGGED_AUDIO = re.compile(r"Stream #0:(\d+)(?:\[0x[0-9a-f]+\])?\(([a-z]{3})\): Audio: ")
_LEVEL_TAG = re.compile(r"^\[(?:info|verbose)\] ")
#: Below the absolute gate (-70 LUFS) nothing counts: loudnorm says `-inf`, there is no gain.
SILENT_LUFS = -70.0
#: The demuxer that reads each container back (the output is ours: no probing needed).
DEMUXERS = {"mp4": "mov", "mov": "mov", "m4a": "mov", "mkv": "matroska", "webm": "matroska",
            "ogg": "ogg", "mp3": "mp3"}  # fmt: skip
#: The rate a track goes back to when neither the job nor the probe names one.
FALLBACK_RATE = 48000
_MAX_LINES = 4096


@dataclass(frozen=True, slots=True)
class Measured:
    """One track as `loudnorm` measured it (LUFS, dBTP, LU; `offset` is pass 2's `offset`)."""

    i: float
    tp: float
    lra: float
    thresh: float
    offset: float

    @property
    def silent(self) -> bool:
        return not math.isfinite(self.i) or self.i <= SILENT_LUFS


@dataclass(frozen=True, slots=True)
class Normalisation:
    """What pass 1 settled: per output audio track, its measurement, its filter ("" for a
    silent track, left alone) and its mode (LoudnessReport.mode)."""

    measured: tuple[Measured, ...] = ()
    filters: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


class _Block(msgspec.Struct):
    input_i: str
    input_tp: str
    input_lra: str
    input_thresh: str
    target_offset: str


class LoudnormLog:
    """What a run's stderr says about loudness: each `loudnorm` instance's JSON block, and which
    input stream carries each language (the banner names it; the probe does not)."""

    def __init__(self) -> None:
        self.blocks: dict[int, list[str]] = {}
        #: Input stream indices per language tag, in order.
        self.languages: dict[str, list[int]] = {}
        self._current: int | None = None
        self._inputs_done = False
        self._left = _MAX_LINES

    def add(self, line: str) -> None:
        if found := _MARKER.search(line):
            self._current = int(found.group(1))
            self.blocks[self._current] = []
            return
        if not self._inputs_done:
            if "Output #" in line or "Stream mapping:" in line:
                self._inputs_done = True
            elif found := _TAGGED_AUDIO.search(line):
                indices = self.languages.setdefault(found.group(2), [])
                if int(found.group(1)) not in indices:
                    indices.append(int(found.group(1)))
        if self._current is not None and self._left > 0:
            self._left -= 1
            self.blocks[self._current].append(_LEVEL_TAG.sub("", line))
            if line.strip() == "}":
                self._current = None

    def measurements(self, count: int) -> list[Measured]:
        """The blocks in filter order (the graph's order is the tracks'); JobError unless there
        is one readable block per track."""
        if len(self.blocks) != count:
            raise JobError(f"loudnorm reported {len(self.blocks)} measurement(s) for {count} "
                           f"audio track(s): is this ffmpeg's loudnorm printing JSON?")  # fmt: skip
        return [parse_block(self.blocks[n]) for n in sorted(self.blocks)]


def parse_block(lines: Sequence[str]) -> Measured:
    """One `print_format=json` block; JobError naming what is wrong with it."""
    text = "\n".join(lines)
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise JobError("loudnorm printed no JSON measurement", stderr_tail=text[-2000:])
    try:
        block = msgspec.json.decode(text[start : end + 1].encode(), type=_Block)
        values = [float(v) for v in (block.input_i, block.input_tp, block.input_lra,
                                     block.input_thresh, block.target_offset)]  # fmt: skip
    except (msgspec.DecodeError, ValueError) as exc:
        reason = f"loudnorm's measurement is unreadable: {exc}"
        raise JobError(reason, stderr_tail=text[-2000:]) from exc
    return Measured(*values)


def parse_loudnorm(lines: Iterable[str], count: int) -> list[Measured]:
    log = LoudnormLog()
    for line in lines:
        log.add(line)
    return log.measurements(count)


def input_tracks(op: Transcode, info: ProbeInfo) -> list[tuple[str, int | None]]:
    """Per output audio track: the input stream specifier and its sample rate (None: not known
    yet, for a track chosen by language). Empty when the input has none to keep."""
    audios = [s for s in info.streams if s.type == "audio"]
    if op.audio_tracks == "all":
        return [(f"0:a:{i}", s.sample_rate) for i, s in enumerate(audios)]
    if op.audio_language is not None:
        return [(f"0:a:m:language:{op.audio_language}", None)]
    n = op.audio_stream or 0
    return [(f"0:a:{n}", audios[n].sample_rate)] if n < len(audios) else []


def _clock(seconds: float) -> str:
    return f"{seconds:.6f}"


def _pre(op: Transcode) -> str:
    """A downmix (or upmix) before measuring, so the layout measured is the one encoded."""
    return f"aformat=channel_layouts={op.audio_layout}," if op.audio_layout else ""


def _targets(t: Loudness) -> str:
    return f"I={t.integrated:g}:TP={t.true_peak:g}:LRA={t.lra:g}"


def measure_graph(sources: Sequence[str], pre: str, targets: str) -> list[str]:
    """One `loudnorm` per track in one graph, each into the null muxer."""
    measure = f"loudnorm={targets}:print_format=json"
    chains = [f"[{s}]{pre}{measure}[m{n}]" for n, s in enumerate(sources)]
    maps = [arg for n in range(len(sources)) for arg in ("-map", f"[m{n}]")]
    return ["-filter_complex", ";".join(chains), *maps]


def measure_args(
    op: Transcode, src: Path, sources: Sequence[str], *, threads: int, guard: Sequence[str]
) -> list[str]:
    """Pass 1: the tracks as the encode will take them (same trim, same layout), measured."""
    assert op.loudness is not None
    args = ["-ss", _clock(op.start_seconds)] if op.start_seconds else []
    args += ["-threads", str(threads), *guard, "-i", ffmpeg_arg(src)]
    args += measure_graph(sources, _pre(op), _targets(op.loudness))
    if op.duration_seconds is not None:
        args += ["-t", _clock(op.duration_seconds)]
    return [*args, "-f", "null", "-"]


def mode(target: Loudness, m: Measured) -> str:
    """loudnorm's own rule: one linear gain unless it would push the true peak over the target
    or the range is wider than asked; then its dynamic compressor and limiter."""
    if m.silent:
        return "none"
    fits = m.tp + (target.integrated - m.i) <= target.true_peak and m.lra <= target.lra
    return "linear" if fits else "dynamic"


def apply_filter(op: Transcode, m: Measured, rate: int) -> str:
    """Pass 2 for one track: linear gain from the measurement (see `mode`), then back to
    `rate` (dynamic loudnorm runs at 192 kHz)."""
    assert op.loudness is not None
    # loudnorm reads measured_LRA 0 as "not given" and then refuses linear mode: a steady tone
    # measures 0.00 LU, so it goes in as the smallest value it prints instead.
    lra = max(m.lra, 0.01)
    measured = (f"measured_I={m.i:.2f}:measured_TP={m.tp:.2f}:measured_LRA={lra:.2f}"
                f":measured_thresh={m.thresh:.2f}:offset={m.offset:.2f}")  # fmt: skip
    norm = f"loudnorm={_targets(op.loudness)}:{measured}:linear=true:print_format=none"
    return f"{_pre(op)}{norm},aresample={rate}"


def output_args(container: str, path: Path, tracks: int, *, threads: int) -> list[str]:
    """Measure the written output's audio tracks (read back with the container's demuxer)."""
    args = ["-threads", str(threads), "-protocol_whitelist", "file", "-f", DEMUXERS[container],
            "-i", ffmpeg_arg(path)]  # fmt: skip
    sources = [f"0:a:{n}" for n in range(tracks)]
    return [*args, *measure_graph(sources, "", "I=-23:TP=-1:LRA=7"), "-f", "null", "-"]


def spans(video: bool) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float]]:
    """Progress for measure, encode, check: decoding audio is cheap next to encoding video."""
    if video:
        return (0.0, 5.0), (5.0, 95.0), (95.0, 100.0)
    return (0.0, 30.0), (30.0, 90.0), (90.0, 100.0)


async def _measure(
    ctx: JobContext,
    args: list[str],
    count: int,
    duration_s: float | None,
    span: tuple[float, float],
) -> tuple[list[Measured], LoudnormLog]:
    log = LoudnormLog()
    await run_ffmpeg(
        ctx.tools.ffmpeg,
        args,
        control=ctx.handle,
        on_progress=ctx.progress,
        duration_s=duration_s,
        span=span,
        progress_interval=ctx.progress_interval,
        on_stderr=log.add,
    )
    return log.measurements(count), log


async def measure_input(
    ctx: JobContext,
    op: Transcode,
    src: Path,
    info: ProbeInfo,
    *,
    duration_s: float | None,
    span: tuple[float, float],
    encoder: str | None,
) -> Normalisation:
    """Pass 1 through the job's runner (cancel, pause and the hard timeout apply as to the
    encode), announced like the encode's runs."""
    tracks = input_tracks(op, info)
    if not tracks:
        return Normalisation(notes=("the input has no audio track to keep: `loudness` did "
                                    "nothing",))  # fmt: skip
    args = measure_args(op, src, [s for s, _ in tracks], threads=ctx.threads,
                        guard=ctx.media.guard())  # fmt: skip
    await ctx.announce(encoder, args)
    measured, log = await _measure(ctx, args, len(tracks), duration_s, span)
    assert op.loudness is not None
    filters, modes, notes = [], [], []
    for n, ((_, rate), m) in enumerate(zip(tracks, measured, strict=True)):
        modes.append(mode(op.loudness, m))
        if modes[-1] == "none":
            filters.append("")
            notes.append(f"audio track {n} is silent: its loudness is left as it was")
            continue
        if modes[-1] == "dynamic":
            notes.append(f"audio track {n}: one gain to {op.loudness.integrated:g} LUFS would "
                         f"break the true-peak or range target; loudnorm compresses it "
                         f"dynamically")  # fmt: skip
        if rate is None and op.audio_language is not None:
            tagged = log.languages.get(op.audio_language, [])
            rate = next((s.sample_rate for s in info.streams if tagged and s.index == tagged[0]),
                        None)  # fmt: skip
            if len(tagged) > 1:  # the language map keeps every such track; one was measured
                notes.append(f"{len(tagged)} audio tracks are tagged {op.audio_language!r}: "
                             f"only the first is normalised")  # fmt: skip
        filters.append(apply_filter(op, m, op.audio_sample_rate or rate or FALLBACK_RATE))
    return Normalisation(tuple(measured), tuple(filters), tuple(modes), tuple(notes))


async def measure_output(
    ctx: JobContext,
    op: Transcode,
    path: Path,
    before: Normalisation,
    *,
    duration_s: float | None,
    span: tuple[float, float],
) -> tuple[list[LoudnessReport], list[str]]:
    """The written output's loudness next to the input's, one report per audio track, and a
    note for each track whose encoded true peak ended over the target."""
    assert op.loudness is not None
    count = len(before.measured)
    if count == 0:
        return [], []
    args = output_args(op.settled_container, path, count, threads=ctx.threads)
    await ctx.announce(None, args)
    after, _ = await _measure(ctx, args, count, duration_s, span)
    tracks = zip(before.measured, after, before.modes, strict=True)
    reports = [report(n, a, b, m) for n, (a, b, m) in enumerate(tracks)]
    return reports, overshoots(op.loudness, reports)


def report(track: int, before: Measured, after: Measured, mode: str) -> LoudnessReport:
    return LoudnessReport(
        track=track, input_i=_finite(before.i), input_tp=_finite(before.tp),
        input_lra=_finite(before.lra), output_i=_finite(after.i), output_tp=_finite(after.tp),
        output_lra=_finite(after.lra), mode=mode,
    )  # fmt: skip


def overshoots(target: Loudness, reports: Sequence[LoudnessReport]) -> list[str]:
    """Lossy encoders drop what a limiter's clipped peaks were made of and the peaks come back
    (a hard-limited track in AAC: several dB over): say so rather than report quietly."""
    notes = []
    for r in reports:
        if r.mode != "none" and r.output_tp is not None and r.output_tp > target.true_peak + 0.5:
            notes.append(f"audio track {r.track}: the encoded true peak is {r.output_tp:g} dBTP, "
                         f"over the {target.true_peak:g} target (lossy encoding overshoots); a "
                         f"lower `true_peak` leaves room")  # fmt: skip
    return notes


def _finite(value: float) -> float | None:
    """JSON has no infinity: silence reads as None."""
    return round(value, 2) if math.isfinite(value) else None
