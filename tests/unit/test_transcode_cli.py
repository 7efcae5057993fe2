"""`flotilla submit transcode`'s picture flags make the same job document the schema takes."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.api.fleetfit import encoders_for
from control.cli.jobflags import flag_document, submit_argv, to_spec
from control.cli.main import build_parser
from control.errors import BadInput
from schemas.operations import Transcode
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
