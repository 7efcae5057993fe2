"""QSV decode without an Intel device: the argv of a QSV transcode with and without decode on
the device, the graph it feeds, the package ladder of the qsv pool, and the run decoded in
software after a failed QSV-decoded one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.errors import EncoderError, JobError, JobTimeout
from daemon.ffmpeg.stderr import StderrTail, classify
from daemon.ops import transcode
from daemon.ops.ladder_args import package_args
from daemon.ops.transcode_args import Extra, Node, transcode_args
from daemon.ops.transcode_plan import Plan
from schemas.encoderneeds import package_family
from schemas.jobs import JobSpec, Requirements
from schemas.operations import Package, Rung, Transcode
from schemas.results import StreamInfo
from schemas.videoopts import Crop, Overlay

NODE = Node(threads=2, hwaccels=frozenset({"qsv", "vaapi"}), render_node="/dev/dri/renderD129")
DEVICE = ["-init_hw_device", "qsv=hw:hw,child_device=/dev/dri/renderD129", "-filter_hw_device",
          "hw"]  # fmt: skip
DECODE = ["-hwaccel", "qsv", "-hwaccel_device", "hw", "-c:v:0", "h264_qsv"]
UPLOAD = "format=nv12,hwupload=extra_hw_frames=64"


def _op(**fields: Any) -> Transcode:
    spec = JobSpec(job_id="j", input="file:///i.mp4", output="file:///o/x.mp4",
                   operation=Transcode(**fields))  # fmt: skip
    assert isinstance(spec.operation, Transcode)
    return spec.operation


def _args(node: Node = NODE, src_codec: str | None = "h264", encoder: str = "h264_qsv",
          **fields: Any) -> list[str]:  # fmt: skip
    return transcode_args(_op(**fields), encoder, Path("/i.mp4"), Path("/o/.x.partial"), node,
                          src_codec=src_codec)  # fmt: skip


def _before_input(args: list[str]) -> list[str]:
    return args[: args.index("-i")]


def _value(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_qsv_decodes_on_the_placed_device_into_system_memory() -> None:
    args = _args(height=360)
    head = _before_input(args)
    assert head[head.index("-init_hw_device") : head.index("-init_hw_device") + 4] == DEVICE
    assert head[head.index("-hwaccel") : head.index("-hwaccel") + 6] == DECODE
    # Frames come back to system memory (no output format): the graph is the software one,
    # uploaded to the device for the encoder at the end.
    assert "-hwaccel_output_format" not in args
    assert _value(args, "-vf") == f"scale=-2:360,{UPLOAD}"
    assert _value(args, "-c:v") == "h264_qsv"  # the encoder, after the input


def test_no_qsv_decode_without_hw_decode_the_hwaccel_or_a_qsv_decoder() -> None:
    unverified = Node(threads=2, hwaccels=frozenset({"vaapi"}), render_node="/dev/dri/renderD129")
    for args in (
        _args(hw_decode=False),
        _args(unverified),
        _args(src_codec="prores"),  # no QSV decoder for it
        _args(src_codec=None),
    ):
        assert _before_input(args) == ["-filter_threads", "2", *DEVICE, "-threads", "2",
                                       "-protocol_whitelist", "file"]  # fmt: skip
        assert _value(args, "-vf") == UPLOAD
    # Another family never gets a QSV decoder, whatever the node verified.
    assert "-c:v:0" not in _args(encoder="h264_vaapi") and "qsv" not in _args(encoder="libx264")


def test_software_filters_run_between_the_qsv_decode_and_the_upload() -> None:
    crop = Crop(width=640, height=360, x=2)
    args = _args(deinterlace=True, crop=crop, height=180)
    assert _before_input(args)[-10:-4] == DECODE
    assert _value(args, "-vf") == (
        f"bwdif=mode=send_frame:parity=auto:deint=interlaced,crop=640:360:2:0:exact=1,"
        f"scale=-2:180,{UPLOAD}"
    )


def test_an_overlay_on_a_qsv_decoded_stream_names_that_streams_decoder() -> None:
    op = _op(codec="hevc", crop=Crop(width=640, height=360), video_stream=1,
             overlay=Overlay(image="file:///m.png", margin=4))  # fmt: skip
    mark = Extra(Path("/m.png"), ("-format_whitelist", "png_pipe"))
    args = transcode_args(op, "hevc_qsv", Path("/i.mkv"), Path("/o/p"), NODE, overlay=mark,
                          src_codec="hevc", ten_bit=True)  # fmt: skip
    first = args.index("-i")
    assert args[first - 10 : first - 4] == ["-hwaccel", "qsv", "-hwaccel_device", "hw",
                                            "-c:v:1", "hevc_qsv"]  # fmt: skip
    assert args.count("-hwaccel") == 1  # the image decodes in software
    assert _value(args, "-filter_complex") == (
        "[0:v:1]crop=640:360:0:0:exact=1[base];[1:v]format=rgba[mark];"
        "[base][mark]overlay=x=W-w-4:y=4:format=auto,format=p010le,hwupload=extra_hw_frames=64"
        "[vout]"
    )


def test_a_package_ladder_in_the_qsv_pool_decodes_and_scales_in_software() -> None:
    ladder = Package(ladder=[Rung(height=240, bitrate_kbps=400)], segment_seconds=1.0)
    spec = JobSpec(job_id="p", input="file:///i.mp4", output="file:///o/pkg", operation=ladder,
                   requirements=Requirements(pool="qsv"))  # fmt: skip
    assert package_family(spec) is None  # no QSV ladder: x264, decoded on the CPU
    args = package_args(ladder, list(ladder.ladder), Path("/i.mp4"), Path("/o"), 25, True, 2)
    assert not {"-hwaccel", "-hwaccel_device", "-init_hw_device"} & set(args)
    assert _value(args, "-c:v:0") == "libx264"


# --- a failed QSV-decoded run is run once more decoded in software ---------------------------

H264 = StreamInfo(index=0, type="video", codec="h264", width=640, height=360)


async def _runs(
    monkeypatch: pytest.MonkeyPatch, failure: JobError | None, encoder: str = "h264_qsv"
) -> tuple[list[bool], list[str]]:
    """The `hw_decode` of each run the encoder got (the first failing with `failure`), and the
    notes; raises what the last run raised."""
    runs: list[bool] = []

    async def encode(_ctx: Any, op: Transcode, *_: Any) -> None:
        runs.append(op.hw_decode)
        if failure is not None and len(runs) == 1:
            raise failure

    monkeypatch.setattr(transcode, "_encode", encode)
    ctx: Any = SimpleNamespace(hwaccels=frozenset({"qsv"}))
    notes: list[str] = []
    settled = Plan(video=H264, duration_s=2.0, ten_bit=False)
    await transcode._encode_decoding_in_software_on_failure(
        ctx, _op(), encoder, Path("/i.mp4"), Path("/o/p"), settled, None, notes
    )
    return runs, notes


async def test_a_failed_qsv_decode_runs_again_decoded_in_software(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failure = JobError("Error while opening decoder: unsupported")
    runs, notes = await _runs(monkeypatch, failure)
    assert runs == [True, False]
    assert notes == ["decode on the device (h264_qsv) failed (Error while opening decoder: "
                     "unsupported); decoded in software"]  # fmt: skip
    # An encoder-looking failure of a QSV-decoded run is retried too; only the second counts.
    runs, _ = await _runs(monkeypatch, EncoderError("error initializing output stream",
                                                    encoder="h264_qsv"))  # fmt: skip
    assert runs == [True, False]
    assert (await _runs(monkeypatch, None)) == ([True], [])


async def test_no_second_run_after_a_timeout_or_without_qsv_decode(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(JobTimeout):
        await _runs(monkeypatch, JobTimeout("stalled"))
    with pytest.raises(EncoderError):  # VAAPI falls back along the chain, as before
        await _runs(monkeypatch, EncoderError("failed", encoder="h264_vaapi"), "h264_vaapi")


#: A QSV decoder that cannot open, in ffmpeg 7+'s words (qsvdec.c, then ffmpeg_dec.c's dec_open).
DECODER_FAILED = """\
[dec:h264_qsv @ 0x55d0c8a4b2c0] [error] Error initializing the MFX video decoder: unsupported (-3)
[dec:h264_qsv @ 0x55d0c8a4b2c0] [error] Error while opening decoder: Function not implemented"""


def test_a_qsv_decoder_that_cannot_open_is_neither_the_input_nor_the_encoder() -> None:
    tail = StderrTail()
    for line in DECODER_FAILED.splitlines():
        tail.add(line)
    error = classify(38, tail, encoder="h264_qsv")
    assert type(error) is JobError  # the run decoded in software decides
    assert (
        error.reason == "[dec:h264_qsv] Error initializing the MFX video decoder: unsupported (-3)"
    )
