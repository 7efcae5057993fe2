"""The transcode argv for each picture option and encoder family (no GPU needed: pure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.errors import InvalidJob
from daemon.ops.transcode_args import Extra, Node, transcode_args
from daemon.ops.transcode_plan import blind_plan, hdr_colour
from daemon.ops.videograph import SDR, TONEMAP, Colour
from schemas.audioopts import Loudness
from schemas.jobs import JobSpec
from schemas.operations import Transcode
from schemas.results import StreamInfo
from schemas.videoopts import Crop, Overlay

NODE = Node(threads=2, hwaccels=frozenset({"cuda"}), render_node="/dev/dri/renderD129")


def _args(encoder: str, output: str = "file:///o/x.mp4", **op: Any) -> list[str]:
    spec = JobSpec(job_id="j", input="file:///i.mp4", output=output, operation=Transcode(**op))
    assert isinstance(spec.operation, Transcode)
    return transcode_args(spec.operation, encoder, Path("/i.mp4"), Path("/o/.x.partial"), NODE)


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_trim_seeks_before_the_input_and_bounds_the_output() -> None:
    args = _args("libx264", start_seconds=2.5, duration_seconds=4.0)
    assert args.index("-ss") < args.index("-i") < args.index("-t")
    assert (_value(args, "-ss"), _value(args, "-t")) == ("2.500000", "4.000000")
    tiny = _args("libx264", start_seconds=1e-05)
    assert _value(tiny, "-ss") == "0.000010"  # fixed point: ffmpeg reads no exponent
    assert "-ss" not in _args("libx264") and "-t" not in _args("libx264")


def test_picture_filters_run_in_order_before_the_format() -> None:
    args = _args("libx264", deinterlace=True, crop=Crop(width=640, height=360, x=2),
                 height=180, fps=30.0)  # fmt: skip
    assert _value(args, "-vf") == (
        "bwdif=mode=send_frame:parity=auto:deint=interlaced,crop=640:360:2:0:exact=1,"
        "scale=-2:180,fps=30.0,format=yuv420p"
    )


def test_gop_per_encoder() -> None:
    x264 = _args("libx264", gop_size=48, closed_gop=True)
    assert [_value(x264, f) for f in ("-g", "-keyint_min", "-sc_threshold")] == ["48", "48", "0"]
    assert _value(x264, "-flags") == "+cgop"
    x265 = _args("libx265", codec="hevc", gop_size=48, closed_gop=True, level="5.1")
    assert "-g" not in x265
    assert _value(x265, "-x265-params") == (
        "pools=2:log-level=warning:keyint=48:min-keyint=48:scenecut=0:open-gop=0:level-idc=5.1"
    )
    nvenc = _args("h264_nvenc", gop_size=60, profile="high", level="4.1")
    assert [_value(nvenc, f) for f in ("-g", "-no-scenecut")] == ["60", "1"]
    assert [_value(nvenc, f) for f in ("-profile:v", "-level:v")] == ["high", "4.1"]


def test_profiles_on_hardware_and_their_pixel_formats() -> None:
    vaapi = _args("h264_vaapi", profile="baseline")
    assert _value(vaapi, "-profile:v") == "constrained_baseline"
    assert _value(vaapi, "-vf").endswith("format=nv12,hwupload")
    hevc = _args("hevc_nvenc", codec="hevc", profile="main10")
    assert _value(hevc, "-vf") == "format=p010le"
    assert _value(_args("libx265", codec="hevc", profile="main10"), "-vf") == "format=yuv420p10le"
    assert _value(_args("libx264", pix_fmt="yuv422p"), "-vf") == "format=yuv422p"


def test_overlay_makes_a_two_input_graph() -> None:
    spec = JobSpec(
        job_id="j", input="file:///i.mp4", output="file:///o/x.mp4",
        operation=Transcode(height=360, overlay=Overlay(image="file:///m.png", margin=4)),
    )  # fmt: skip
    assert isinstance(spec.operation, Transcode)
    mark = Extra(Path("/m.png"), ("-format_whitelist", "png_pipe"))
    args = transcode_args(spec.operation, "libx264", Path("/i.mp4"), Path("/o/p"), NODE,
                          overlay=mark)  # fmt: skip
    inputs = [args[i + 1] for i, a in enumerate(args) if a == "-i"]
    assert inputs == ["file:/i.mp4", "file:/m.png"]
    assert args[args.index("file:/m.png") - 2] == "png_pipe"
    assert _value(args, "-filter_complex") == (
        "[0:v:0]scale=-2:360[base];[1:v]format=rgba[mark];"
        "[base][mark]overlay=x=W-w-4:y=4:format=auto,format=yuv420p[vout]"
    )
    assert _value(args, "-map") == "[vout]" and "-vf" not in args


def _video(hdr: str | None, depth: int = 10) -> StreamInfo:
    pix = "yuv420p10le" if depth == 10 else "yuv420p"
    return StreamInfo(index=0, type="video", codec="hevc", pix_fmt=pix, bit_depth=depth, hdr=hdr)


def test_hdr_sources_keep_their_tags_or_are_tone_mapped() -> None:
    hevc = Transcode(codec="hevc")
    assert hdr_colour(hevc, _video("hdr10"), True) == (
        Colour("bt2020", "smpte2084", "bt2020nc"),
        (),
    )
    assert hdr_colour(hevc, _video("hlg"), True)[0] == Colour("bt2020", "arib-std-b67", "bt2020nc")
    colour, notes = hdr_colour(hevc, _video("dolby_vision"), True)
    assert colour is not None and colour.transfer == "smpte2084" and "not carried" in notes[0]
    assert hdr_colour(Transcode(hdr="tonemap"), _video("hdr10"), True)[0] == SDR
    # An SDR source: nothing to keep or map, whatever `hdr` says.
    assert hdr_colour(Transcode(hdr="tonemap"), _video(None, 8), False) == (None, ())
    with pytest.raises(InvalidJob, match=r"HDR10 \(PQ\) but the output would be 8-bit h264"):
        hdr_colour(Transcode(), _video("hdr10"), True)
    with pytest.raises(InvalidJob, match="HLG but the output would be 8-bit vp9"):
        hdr_colour(Transcode(codec="vp9", pix_fmt="yuv420p"), _video("hlg"), True)


def test_colour_tags_go_on_the_frames_before_the_format() -> None:
    op = Transcode(codec="hevc", height=720)
    keep = Colour("bt2020", "smpte2084", "bt2020nc")
    args = transcode_args(op, "libx265", Path("/i"), Path("/o"), NODE, ten_bit=True, colour=keep)
    assert _value(args, "-vf") == (
        "scale=-2:720,setparams=color_primaries=bt2020:color_trc=smpte2084:colorspace=bt2020nc,"
        "format=yuv420p10le"
    )
    args = transcode_args(Transcode(), "h264_nvenc", Path("/i"), Path("/o"), NODE, colour=SDR)
    vf = _value(args, "-vf")
    assert vf.startswith(TONEMAP + ",setparams=color_primaries=bt709:color_trc=bt709")
    assert vf.endswith(":colorspace=bt709,format=yuv420p")


@pytest.mark.parametrize(
    ("op", "blind"),
    [
        (Transcode(codec="none", container="m4a"), True),
        (Transcode(codec="none", container="mp3", audio_language="fra"), True),
        (Transcode(codec="none", container="ogg", start_seconds=1.0), True),
        (Transcode(codec="h264"), True),  # guessed 8-bit SDR without subtitles, then checked
        (Transcode(codec="h264", start_seconds=2.0, crop=Crop(width=64, height=64)), True),
        (Transcode(codec="h264", video_stream=1), False),  # an input with several: probe first
        (Transcode(codec="h264", loudness=Loudness()), False),  # pass 1 measures the input
        (Transcode(codec="h264", burn_subtitles=0), False),  # the track is found by the probe
        (Transcode(codec="none", container="mp4"), False),  # mp4 keeps text subtitles
        (Transcode(codec="none", container="m4a", loudness=Loudness()), False),  # two passes
    ],
)
def test_what_starts_beside_the_probe(op: Transcode, blind: bool) -> None:
    assert (blind_plan(op) is not None) == blind
