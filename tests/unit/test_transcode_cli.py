"""`flotilla submit transcode`'s picture flags make the same job document the schema takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.api.fleetfit import encoders_for
from control.cli.format import result_rows
from control.cli.jobflags import flag_document, submit_argv, to_spec
from control.cli.main import build_parser
from control.errors import BadInput
from schemas.operations import Transcode
from schemas.results import JobResult, LoudnessReport
from schemas.videoopts import Crop, Overlay


def _spec(*argv: str) -> Transcode:
    args = build_parser().parse_args(submit_argv(["submit", "transcode", *argv]))
    spec = to_spec(flag_document(args), args, "from flags")
    assert isinstance(spec.operation, Transcode)
    return spec.operation


def test_picture_flags_reach_the_schema(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    op = _spec("in.mp4", str(tmp_path / "out.mkv"), "--codec", "hevc", "--start", "1.5",
               "--duration", "10", "--crop", "640:360:8:4", "--deinterlace", "--fps", "30",
               "--gop", "48", "--closed-gop", "--profile", "main10", "--level", "4.1",
               "--pix-fmt", "yuv420p10le", "--overlay", str(logo),
               "--overlay-position", "bottom-left", "--hdr", "keep")  # fmt: skip
    assert (op.container, op.start_seconds, op.duration_seconds) == ("mkv", 1.5, 10.0)
    assert op.crop == Crop(width=640, height=360, x=8, y=4)
    assert (op.deinterlace, op.fps, op.gop_size, op.closed_gop) == (True, 30.0, 48, True)
    assert (op.profile, op.level, op.pix_fmt, op.hdr) == ("main10", "4.1", "yuv420p10le", "keep")
    assert op.overlay == Overlay(image=logo.as_uri(), position="bottom-left")


def test_flags_the_schema_refuses_are_refused_with_its_reason() -> None:
    with pytest.raises(BadInput, match="`closed_gop` needs `gop_size`"):
        _spec("in.mp4", "out.mp4", "--closed-gop")
    with pytest.raises(BadInput, match="W:H or W:H:X:Y"):
        _spec("in.mp4", "out.mp4", "--crop", "640x360")
    with pytest.raises(BadInput, match=r"output extension \.avi names no container"):
        _spec("in.mp4", "out.avi")
    # The CLI no longer needs to infer the container: the schema does, webm's opus included.
    op = _spec("in.mp4", "out.webm", "--codec", "vp9")
    assert (op.container, op.audio_codec) == ("webm", "opus")


def test_a_software_only_pixel_format_needs_a_software_encoder_at_submit() -> None:
    args = build_parser().parse_args(
        submit_argv(["submit", "transcode", "in.mp4", "out.mp4", "--pix-fmt", "yuv444p"])
    )
    spec = to_spec(flag_document(args), args, "from flags")
    assert encoders_for(spec) == ("libx264",)


def test_audio_flags_and_an_audio_only_output() -> None:
    op = _spec("in.mp4", "out.mp3", "--audio-layout", "mono", "--sample-rate", "22050",
               "--audio-language", "fra")  # fmt: skip
    assert (op.codec, op.container, op.audio_codec) == ("none", "mp3", "mp3")
    assert (op.audio_layout, op.audio_sample_rate, op.audio_language) == ("mono", 22050, "fra")
    op = _spec("in.mp4", "out.mkv", "--audio-codec", "opus", "--all-audio")
    assert (op.codec, op.audio_codec, op.audio_tracks) == ("h264", "opus", "all")
    with pytest.raises(BadInput, match="opus takes sample rates"):
        _spec("in.mp4", "out.ogg", "--sample-rate", "44100")


def test_loudness_flag_and_its_status_line() -> None:
    target = _spec("in.mp4", "out.m4a", "--loudness", "-16:-1.5").loudness
    assert target is not None
    assert (target.integrated, target.true_peak, target.lra) == (-16.0, -1.5, 7.0)
    target = _spec("in.mp4", "out.mkv", "--loudness", "-23", "--all-audio").loudness
    assert target is not None and target.integrated == -23.0
    with pytest.raises(BadInput, match="write I"):
        _spec("in.mp4", "out.mp4", "--loudness", "loud")
    with pytest.raises(BadInput, match="write I"):
        _spec("in.mp4", "out.mp4", "--loudness", "-23:-1:7:9")
    with pytest.raises(BadInput, match=r"\$.operation.loudness.integrated"):
        _spec("in.mp4", "out.mp4", "--loudness", "-3")
    with pytest.raises(BadInput, match="`loudness` needs re-encoded audio"):
        _spec("in.mp4", "out.mp4", "--loudness", "-23", "--audio-codec", "copy")
    result = JobResult(encoder="aac", loudness=[
        LoudnessReport(track=0, input_i=-56.82, input_tp=-52.5, input_lra=0.1, output_i=-23.04,
                       output_tp=-18.7, output_lra=0.0),
        LoudnessReport(track=1, mode="none"),
    ])  # fmt: skip
    rows = [v for k, v in result_rows(result) if k == "loudness"]
    assert rows == [
        "track 0: -56.8 -> -23.0 LUFS, true peak -52.5 -> -18.7 dBTP, LRA 0.1 -> 0.0 LU (linear)",
        "track 1: silent -> silent LUFS, true peak silent -> silent dBTP, LRA silent -> silent LU"
        " (none)",
    ]
