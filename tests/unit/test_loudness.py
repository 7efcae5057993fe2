"""Two-pass loudness, pure parts: the measuring and applying argv, and reading loudnorm's JSON
blocks out of ffmpeg's stderr (garbage there is a clear error, not a wrong gain)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.errors import JobError
from daemon.ops.loudness import (
    LoudnormLog,
    Measured,
    apply_filter,
    input_tracks,
    measure_args,
    mode,
    output_args,
    overshoots,
    parse_loudnorm,
)
from daemon.ops.transcode_args import Node, transcode_args
from schemas.audioopts import Loudness
from schemas.codec import encode
from schemas.events import Completed
from schemas.jobs import JobSpec
from schemas.operations import Transcode
from schemas.registry import EVENT_DECODER
from schemas.results import JobResult, LoudnessReport, ProbeInfo, StreamInfo

NODE = Node(threads=2, hwaccels=frozenset(), render_node="/dev/dri/renderD128")


def _op(output: str = "file:///o/x.mp4", **op: Any) -> Transcode:
    target = Loudness(integrated=-16, true_peak=-1.5)
    spec = JobSpec(job_id="j", input="file:///i.mp4", output=output,
                   operation=Transcode(loudness=target, **op))  # fmt: skip
    assert isinstance(spec.operation, Transcode)
    return spec.operation


def _block(i: str = "-41.16", tp: str = "-37.51", offset: str = "0.03") -> list[str]:
    return [
        "{",
        f'\t"input_i" : "{i}",',
        f'\t"input_tp" : "{tp}",',
        '\t"input_lra" : "0.10",',
        '\t"input_thresh" : "-51.16",',
        '\t"output_i" : "-23.03",',
        '\t"normalization_type" : "dynamic",',
        f'\t"target_offset" : "{offset}"',
        "}",
    ]


STDERR = [
    "[info] Input #0, matroska,webm, from 'file:/i.mkv':",
    "[info]   Stream #0:0: Video: h264 (High), yuv420p(progressive), 160x120, 25 fps",
    "[info]   Stream #0:1(eng): Audio: aac (LC), 48000 Hz, mono, fltp (default)",
    "[info]   Stream #0:2(fra): Audio: aac (LC), 32000 Hz, stereo, fltp",
    "[info] Stream mapping:",
    "[info]   Stream #0:2 (aac) -> loudnorm:default",
    "[info]   Stream #0:9(fra): Audio: pcm_s16le, 192000 Hz",  # an output: not the input's
    "[Parsed_loudnorm_1 @ 0x7f2040002a40] [info] ",
    *_block("-30.00", "-27.00", "-0.10"),
    "[Parsed_loudnorm_0 @ 0x7f20400031c0] [info] ",
    *_block(),
    "[out#0/null @ 0x55f951cf7500] [info] video:0KiB audio:3010KiB",
]


def test_blocks_are_read_in_filter_order_whatever_order_they_print_in() -> None:
    first, second = parse_loudnorm(STDERR, 2)
    assert first == Measured(i=-41.16, tp=-37.51, lra=0.10, thresh=-51.16, offset=0.03)
    assert (second.i, second.tp, second.offset) == (-30.0, -27.0, -0.1)
    log = LoudnormLog()
    for line in STDERR:
        log.add(line)
    assert log.languages == {"eng": [1], "fra": [2]}


def test_silence_reads_as_minus_infinity() -> None:
    lines = ["[Parsed_loudnorm_0 @ 0x1] [info] ", *_block("-inf", "-inf", "inf")]
    [silent] = parse_loudnorm(lines, 1)
    assert silent.silent and not Measured(-23.0, -1, 1, -33, 0).silent


@pytest.mark.parametrize(
    ("lines", "count", "needle"),
    [
        ([], 1, "loudnorm reported 0 measurement(s) for 1 audio track(s)"),
        (["garbage", "{ not json }", "[error] something broke"], 1, "reported 0 measurement"),
        (STDERR, 3, "reported 2 measurement(s) for 3"),
        (["[Parsed_loudnorm_0 @ 0x1] [info] ", "no block here"], 1, "printed no JSON"),
        (["[Parsed_loudnorm_0 @ 0x1] [info] ", "{", '"input_i": "-20",', "}"], 1,
         "measurement is unreadable"),
        (["[Parsed_loudnorm_0 @ 0x1] [info] ", *_block(i="loud")], 1, "unreadable"),
        (["[Parsed_loudnorm_0 @ 0x1] [info] ", "{", '"input_i": ', "}"], 1, "unreadable"),
    ],
)  # fmt: skip
def test_garbage_stderr_is_a_clear_error(lines: list[str], count: int, needle: str) -> None:
    with pytest.raises(JobError) as info:
        parse_loudnorm(lines, count)
    assert needle in info.value.reason


def test_the_measuring_pass_takes_the_tracks_as_the_encode_does() -> None:
    op = _op(start_seconds=1.5, duration_seconds=3.0, audio_layout="stereo")
    args = measure_args(op, Path("/i.mkv"), ["0:a:0", "0:a:m:language:fra"], threads=2,
                        guard=("-protocol_whitelist", "file"))  # fmt: skip
    assert args.index("-ss") < args.index("-protocol_whitelist") < args.index("-i")
    graph = args[args.index("-filter_complex") + 1]
    chain = "aformat=channel_layouts=stereo,loudnorm=I=-16:TP=-1.5:LRA=7:print_format=json"
    assert graph == f"[0:a:0]{chain}[m0];[0:a:m:language:fra]{chain}[m1]"
    assert args[-7:] == ["-map", "[m1]", "-t", "3.000000", "-f", "null", "-"]
    out = output_args("m4a", Path("/o/.x.partial"), 1, threads=2)
    assert out[out.index("-f") + 1] == "mov" and out[-3:] == ["-f", "null", "-"]


def test_the_applying_pass_filters_each_track_and_resamples() -> None:
    m = Measured(i=-56.82, tp=-52.5, lra=0.1, thresh=-66.82, offset=-0.004)
    chain = apply_filter(_op(), m, 44100)
    assert chain == (
        "loudnorm=I=-16:TP=-1.5:LRA=7:measured_I=-56.82:measured_TP=-52.50:measured_LRA=0.10"
        ":measured_thresh=-66.82:offset=-0.00:linear=true:print_format=none,aresample=44100"
    )
    op = _op(output="file:///o/x.mkv", audio_tracks="all")
    args = transcode_args(op, "libx264", Path("/i.mkv"), Path("/o/.x"), NODE,
                          audio_filters=("F0", "", "F2"))  # fmt: skip
    assert args[args.index("-filter:a:0") + 1] == "F0" and "-filter:a:1" not in args
    assert args[args.index("-filter:a:2") + 1] == "F2"
    assert args.index("-c:a") < args.index("-filter:a:0") < args.index("-f")
    # A first video pass writes no audio: nothing to filter.
    assert "-filter:a:0" not in transcode_args(op, "libx264", Path("/i.mkv"), None, NODE,
                                               audio_filters=("F0",))  # fmt: skip


def test_tracks_to_measure_follow_the_track_choice() -> None:
    info = ProbeInfo(container="matroska", duration_s=3.0, streams=[
        StreamInfo(index=0, type="video", codec="h264"),
        StreamInfo(index=1, type="audio", codec="aac", sample_rate=48000),
        StreamInfo(index=2, type="audio", codec="aac", sample_rate=32000),
    ])  # fmt: skip
    assert input_tracks(_op(audio_tracks="all"), info) == [("0:a:0", 48000), ("0:a:1", 32000)]
    assert input_tracks(_op(audio_stream=1), info) == [("0:a:1", 32000)]
    assert input_tracks(_op(audio_stream=2), info) == []  # `0:a:2?` keeps none: nothing to do
    assert input_tracks(_op(audio_language="fra"), info) == [("0:a:m:language:fra", None)]


def test_the_mode_follows_loudnorms_rule() -> None:
    tone = Measured(i=-56.8, tp=-52.5, lra=0.0, thresh=-66.8, offset=0.0)
    assert mode(Loudness(integrated=-23), tone) == "linear"  # peak ends at -18.7 dBTP
    assert mode(Loudness(integrated=-10, true_peak=-6), tone) == "dynamic"  # it would be -5.7
    wide = Measured(i=-30.0, tp=-20.0, lra=12.0, thresh=-40.0, offset=0.0)
    assert mode(Loudness(integrated=-23, lra=7), wide) == "dynamic"
    assert mode(Loudness(integrated=-23, lra=15), wide) == "linear"
    assert mode(Loudness(), Measured(float("-inf"), float("-inf"), 0.0, -70.0, 0.0)) == "none"
    # loudnorm takes measured_LRA=0 for "not given" and would refuse linear mode.
    assert ":measured_LRA=0.01:" in apply_filter(_op(), tone, 48000)


def test_an_encoded_true_peak_over_the_target_is_noted() -> None:
    target = Loudness(integrated=-10, true_peak=-6)
    reports = [
        LoudnessReport(track=0, output_tp=-2.33, mode="dynamic"),
        LoudnessReport(track=1, output_tp=-5.6, mode="linear"),  # within 0.5 dB: fine
        LoudnessReport(track=2, mode="none"),
    ]
    [note] = overshoots(target, reports)
    assert note.startswith("audio track 0: the encoded true peak is -2.33 dBTP, over the -6")


def test_a_completed_event_carries_loudness_silence_included() -> None:
    result = JobResult(loudness=[
        LoudnessReport(track=0, input_i=-56.8, input_tp=-52.5, input_lra=0.0, output_i=-23.04,
                       output_tp=-21.69, output_lra=0.0),
        LoudnessReport(track=1, mode="none"),  # silence: no finite value, JSON has no -inf
    ])  # fmt: skip
    event = Completed(event_id="e1", job_id="j1", node_id="n1", ts=1.0, result=result)
    assert EVENT_DECODER.decode(encode(event)) == event
