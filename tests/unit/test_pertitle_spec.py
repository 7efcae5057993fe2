"""The pertitle operation's spec: what it refuses (naming what is allowed), the CLI form, and
the encoders it routes to."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from control.cli.jobflags import flag_document, submit_argv, to_spec
from control.cli.main import build_parser
from control.errors import BadInput
from daemon.ops.pertitle.args import hls_args
from schemas.encoderneeds import encoder_needs
from schemas.jobs import JobSpec
from schemas.operations import PerTitle, PerTitleRung, fixed_ladder_kbps
from schemas.results import StreamInfo


def _job(**op: Any) -> JobSpec:
    doc = {"v": 1, "job_id": "j1", "input": "file:///m/in.mp4", "output": "file:///m/ladder",
           "operation": {"op": "pertitle", "rungs": [{"height": 180}], **op}}  # fmt: skip
    return msgspec.convert(doc, JobSpec)


def test_defaults_are_a_small_vmaf_93_search() -> None:
    op = _job().operation
    assert isinstance(op, PerTitle)
    assert (op.codec, op.metric, op.target, op.samples, op.sample_seconds) == (
        "h264", "vmaf", 93.0, 3, 2.0,
    )  # fmt: skip
    assert (op.crf_min, op.crf_max, op.max_probes, op.hls) == (16, 40, 6, False)


@pytest.mark.parametrize(
    ("op", "says"),
    [
        ({"metric": "xpsnr"}, "metric 'xpsnr': use one of vmaf, psnr, ssim"),
        ({"codec": "av1"}, "codec 'av1': use one of h264, hevc"),
        ({"target": 120}, "target 120 is outside 0..100 for metric 'vmaf'"),
        ({"metric": "ssim", "target": 93}, "target 93 is outside 0..1 for metric 'ssim'"),
        ({"crf_min": 30, "crf_max": 20}, "crf_min 30 must be below crf_max 20"),
        ({"crf_max": 55}, "at most 51 for h264"),
        ({"rungs": [{"height": 181}]}, r"rung heights must be even \(4:2:0 video\): \[181\]"),
        ({"rungs": [{"height": 180}, {"height": 180}]}, "distinct heights"),
        ({"rungs": []}, "length >= 1"),
        ({"max_probes": 1}, ">= 2"),
        ({"samples": 0}, ">= 1"),
        ({"rungs": [{"height": 180, "max_bitrate_kbps": 5}]}, ">= 16"),
        ({"bogus": 1}, "unknown field `bogus`"),
    ],
)
def test_invalid_specs_are_refused_with_what_is_allowed(op: dict[str, Any], says: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=says):
        _job(**op)


def test_a_missing_output_is_refused() -> None:
    doc = {"v": 1, "job_id": "j1", "input": "file:///m/in.mp4",
           "operation": {"op": "pertitle", "rungs": [{"height": 180}]}}  # fmt: skip
    with pytest.raises(msgspec.ValidationError, match="'pertitle' needs `output`"):
        msgspec.convert(doc, JobSpec)


def test_it_needs_the_software_encoder_and_x264_for_the_reel() -> None:
    assert encoder_needs(_job()) == [("h264", ("libx264",))]
    assert encoder_needs(_job(codec="hevc")) == [
        ("hevc", ("libx265",)), ("the lossless sample reel", ("libx264",)),
    ]  # fmt: skip


def test_the_fixed_ladder_baseline() -> None:
    assert (fixed_ladder_kbps(1080), fixed_ladder_kbps(360)) == (5000, 700)
    assert (fixed_ladder_kbps(180), fixed_ladder_kbps(90)) == (720, 360)  # 4 kbps per line
    assert fixed_ladder_kbps(40) == 200


def _cli(*argv: str) -> PerTitle:
    args = build_parser().parse_args(submit_argv(["submit", "pertitle", *argv]))
    spec = to_spec(flag_document(args), args, "from flags")
    assert isinstance(spec.operation, PerTitle)
    return spec.operation


def test_the_cli_form_reaches_the_schema() -> None:
    op = _cli("in.mp4", "ladder", "--rungs", "720,480:900", "--metric", "psnr", "--target", "40",
              "--samples", "2", "--sample-seconds", "1.5", "--crf-min", "18", "--crf-max", "36",
              "--codec", "hevc", "--hls")  # fmt: skip
    assert [(r.height, r.max_bitrate_kbps) for r in op.rungs] == [(720, None), (480, 900)]
    assert (op.metric, op.target, op.samples, op.sample_seconds) == ("psnr", 40.0, 2, 1.5)
    assert (op.crf_min, op.crf_max, op.codec, op.hls) == (18, 36, "hevc", True)
    assert _cli("in.mp4", "ladder").target == 93.0
    assert _cli("in.mp4", "ladder").subtitles == "keep"
    assert _cli("in.mp4", "ladder", "--hls", "--subtitles", "drop").subtitles == "drop"


def test_the_hls_run_writes_each_text_track_of_the_source_as_webvtt() -> None:
    rungs = [Path("/t/720p.mp4"), Path("/t/360p.mp4")]
    plain = hls_args(rungs, Path("/t"), 2.0)
    assert plain[-1] == "/t/stream_%v/index.m3u8" and "webvtt" not in plain
    tracks = [StreamInfo(index=2, type="subtitle", codec="subrip", language="eng"),
              StreamInfo(index=4, type="subtitle", codec="ass")]  # fmt: skip
    args = hls_args(rungs, Path("/t"), 2.0, src=Path("/in/src.mkv"), subtitles=tracks,
                    guard=("-protocol_whitelist", "file,http"))  # fmt: skip
    inputs = [args[i + 1] for i, a in enumerate(args) if a == "-i"]
    assert inputs == ["file:/t/720p.mp4", "file:/t/360p.mp4", "file:/in/src.mkv"]
    assert args[args.index("file:/in/src.mkv") - 2] == "file,http"  # the source's guard
    tail = args[args.index("/t/stream_%v/index.m3u8") + 1 :]
    assert tail == ["-map", "2:2", "-c:s", "webvtt", "-f", "webvtt", "/t/subs_0.vtt",
                    "-map", "2:4", "-c:s", "webvtt", "-f", "webvtt", "/t/subs_1.vtt"]  # fmt: skip
    assert args[args.index("-var_stream_map") + 1] == "v:0 v:1"  # video variants only


def test_the_cli_refuses_what_the_schema_refuses() -> None:
    with pytest.raises(BadInput, match="write heights like 1080,720 or 720:3000"):
        _cli("in.mp4", "ladder", "--rungs", "720p")
    with pytest.raises(BadInput, match=r"target 3 is outside 0\.\.1 for metric 'ssim'"):
        _cli("in.mp4", "ladder", "--metric", "ssim", "--target", "3")


def test_fields_at_their_defaults_stay_off_the_wire() -> None:
    """A node built before `subtitles` still decodes a job that leaves it at its default."""
    op = PerTitle(rungs=[PerTitleRung(height=180)], hls=True)
    assert msgspec.json.decode(msgspec.json.encode(op)) == {
        "op": "pertitle", "rungs": [{"height": 180, "max_bitrate_kbps": None,
                                     "baseline_kbps": None}], "hls": True,
    }  # fmt: skip
    dropped = PerTitle(rungs=[PerTitleRung(height=180)], subtitles="drop")
    assert msgspec.json.decode(msgspec.json.encode(dropped))["subtitles"] == "drop"
