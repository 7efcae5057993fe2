"""The transcode wire contract: what a producer may ask for, and what is refused before any node
sees it (each refusal names the problem)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.codec import DecodeError, encode
from schemas.registry import JOB_DECODER


def _decode(output: str, **op: Any) -> Any:
    doc = {"job_id": "j1", "input": "file:///in.mp4", "output": output,
           "operation": {"op": "transcode", **op}}  # fmt: skip
    return JOB_DECODER.decode(json.dumps(doc).encode())


def _refused(output: str, **op: Any) -> str:
    with pytest.raises(DecodeError) as info:
        _decode(output, **op)
    return str(info.value)


@pytest.mark.parametrize(
    ("output", "op", "container", "audio"),
    [
        ("file:///o/x.webm", {"codec": "vp9"}, "webm", "opus"),
        ("file:///o/x.WEBM", {"codec": "av1"}, "webm", "opus"),
        ("file:///o/x.mkv", {}, "mkv", "aac"),
        ("file:///o/x.mov", {"codec": "hevc"}, "mov", "aac"),
        ("file:///o/x.m4v", {}, "mp4", "aac"),
        ("file:///o/x.mp4", {}, "mp4", "aac"),
        ("nats-obj://media/renders/x.webm", {"codec": "vp9"}, "webm", "opus"),
        # What older producers sent stays valid: an explicit container matching the name, and a
        # name without an extension (mp4, as before).
        ("file:///o/x.webm", {"codec": "vp9", "container": "webm", "audio_codec": "opus"},
         "webm", "opus"),
        ("file:///o/noext", {}, "mp4", "aac"),
        ("file:///o/noext", {"container": "mkv"}, "mkv", "aac"),
        ("file:///o/x.webm", {"codec": "vp9", "audio_codec": "none"}, "webm", "none"),
    ],
)  # fmt: skip
def test_the_container_follows_the_extension(
    output: str, op: dict[str, Any], container: str, audio: str
) -> None:
    job = _decode(output, **op)
    assert (job.operation.container, job.operation.audio_codec) == (container, audio)
    # Re-encoded, the settled values travel explicitly: a reader of an older release sees them.
    doc = json.loads(encode(job))
    assert (doc["operation"]["container"], doc["operation"]["audio_codec"]) == (container, audio)
    assert JOB_DECODER.decode(encode(job)) == job


def test_a_container_that_contradicts_the_extension_is_refused() -> None:
    error = _refused("file:///o/x.webm", codec="vp9", container="mp4")
    assert "`container` 'mp4' contradicts the output's extension .webm (webm)" in error


def test_an_unknown_extension_is_refused_naming_the_known_ones() -> None:
    error = _refused("file:///o/x.avi")
    assert "output extension .avi names no container" in error
    for ext in (".mp4", ".m4v", ".mkv", ".webm", ".mov"):
        assert ext in error


def test_a_codec_the_extensions_container_cannot_carry_is_refused() -> None:
    assert "codec 'h264' cannot go in container 'webm'" in _refused("file:///o/x.webm")
    assert "webm carries only opus audio" in _refused(
        "file:///o/x.webm", codec="vp9", audio_codec="aac"
    )


@pytest.mark.parametrize(
    ("op", "needle"),
    [
        ({"crop": {"width": 101, "height": 100}}, "crop `width` and `height` must be even"),
        ({"crop": {"width": 8, "height": 100}}, "$.operation.crop.width"),
        ({"start_seconds": -1}, "$.operation.start_seconds"),
        ({"duration_seconds": 0}, "$.operation.duration_seconds"),
        ({"gop_size": 0}, "$.operation.gop_size"),
        ({"closed_gop": True}, "`closed_gop` needs `gop_size`"),
        ({"codec": "av1", "profile": "main"}, "`profile` 'main' is not one av1 has"),
        ({"profile": "main10"}, "`profile` 'main10' is not one h264 has (baseline, high, main)"),
        ({"codec": "hevc", "level": "4.2"}, "`level` '4.2' is not settable for hevc"),
        ({"codec": "vp9", "level": "4.1"}, "`level` '4.1' is not settable for vp9"),
        ({"level": "9.9"}, "$.operation.level"),
        ({"codec": "av1", "pix_fmt": "yuv444p"}, "`pix_fmt` 'yuv444p' is not one av1 encodes"),
        ({"profile": "high", "pix_fmt": "yuv420p10le"}, "`profile` 'high' is 8-bit 4:2:0 only"),
        ({"codec": "hevc", "profile": "main10", "pix_fmt": "yuv422p10le"},
         "`profile` 'main10' is 4:2:0 only"),
        ({"pix_fmt": "rgb24"}, "$.operation.pix_fmt"),
        ({"overlay": {"image": "/etc/passwd"}}, "$.operation.overlay.image"),
        ({"overlay": {"image": "file:///m.png", "position": "left"}},
         "$.operation.overlay.position"),
        ({"overlay": {"image": "file:///m.png", "margin": -1}}, "$.operation.overlay.margin"),
        ({"fps": 0}, "$.operation.fps"),
        ({"hdr": "keep"}, "`hdr` 'keep' needs a 10-bit hevc, av1, vp9 output, not h264"),
        ({"codec": "hevc", "hdr": "keep", "pix_fmt": "yuv420p"}, "`hdr` 'keep' needs 10-bit"),
        ({"codec": "hevc", "hdr": "keep", "profile": "main"}, "`hdr` 'keep' needs 10-bit"),
        ({"hdr": "hdr10"}, "$.operation.hdr"),
    ],
)  # fmt: skip
def test_bad_picture_options_name_the_problem(op: dict[str, Any], needle: str) -> None:
    assert needle in _refused("file:///o/x.mp4", **op)


def test_software_only_pixel_formats_refuse_a_hardware_accel() -> None:
    doc = {"job_id": "j1", "input": "file:///in.mp4", "output": "file:///o/x.mp4",
           "operation": {"op": "transcode", "pix_fmt": "yuv444p"},
           "requirements": {"accel": "nvenc"}}  # fmt: skip
    with pytest.raises(DecodeError, match="`pix_fmt` 'yuv444p' is software-only"):
        JOB_DECODER.decode(json.dumps(doc).encode())
    doc["requirements"] = {"accel": "auto"}
    assert JOB_DECODER.decode(json.dumps(doc).encode()).operation.pix_fmt == "yuv444p"


def test_every_picture_option_round_trips() -> None:
    job = _decode(
        "file:///o/x.mkv", codec="hevc", start_seconds=1.5, duration_seconds=10,
        crop={"width": 640, "height": 360, "x": 8, "y": 4}, deinterlace=True, gop_size=48,
        closed_gop=True, profile="main10", level="4.1", pix_fmt="yuv420p10le", fps=30,
        overlay={"image": "file:///m/logo.png", "position": "center", "margin": 0, "width": 100},
    )  # fmt: skip
    assert JOB_DECODER.decode(encode(job)) == job


@pytest.mark.parametrize(
    ("output", "codec", "audio"),
    [("file:///o/x.m4a", "none", "aac"), ("file:///o/x.ogg", "none", "opus"),
     ("file:///o/x.opus", "none", "opus"), ("file:///o/x.mp3", "none", "mp3"),
     ("file:///o/x.mp4", "h264", "aac")],
)  # fmt: skip
def test_audio_only_containers_settle_no_video(output: str, codec: str, audio: str) -> None:
    job = _decode(output)
    assert (job.operation.codec, job.operation.audio_codec) == (codec, audio)
    assert JOB_DECODER.decode(encode(job)) == job


@pytest.mark.parametrize(
    ("output", "op", "needle"),
    [
        ("file:///o/x.m4a", {"codec": "h264"},
         "codec 'h264' cannot go in container 'm4a' (it holds audio only)"),
        ("file:///o/x.ogg", {"audio_codec": "aac"}, "ogg carries only copy, opus audio, not 'aac'"),
        ("file:///o/x.m4a", {"audio_codec": "none"}, "an output without video needs audio"),
        ("file:///o/x.mp3", {"audio_stream": None}, "an output without video needs audio"),
        ("file:///o/x.mp3", {"audio_layout": "5.1"}, "mp3 carries mono or stereo only"),
        ("file:///o/x.ogg", {"audio_sample_rate": 44100},
         "opus takes sample rates 8000, 12000, 16000, 24000, 48000; not 44100"),
        ("file:///o/x.m4a", {"audio_sample_rate": 44000}, "$.operation.audio_sample_rate"),
        ("file:///o/x.mp4", {"audio_codec": "copy", "audio_layout": "mono"},
         "need re-encoded audio, not `audio_codec` 'copy'"),
        ("file:///o/x.m4a", {"width": 640}, "`width` shape video, but this output has none"),
        ("file:///o/x.mp4", {"codec": "none", "deinterlace": True},
         "`deinterlace` shape video"),
        ("file:///o/x.mp3", {"hdr": "tonemap"}, "`hdr` shape video"),
        ("file:///o/x.m4a", {"audio_language": "english"}, "$.operation.audio_language"),
        ("file:///o/x.mkv", {"audio_tracks": "all", "audio_language": "fra"},
         "`audio_tracks` 'all' keeps every track: leave out `audio_language`"),
        ("file:///o/x.mp3", {"audio_tracks": "all"}, "mp3 holds one audio track"),
        ("file:///o/x.webm", {"codec": "vp9", "audio_codec": "aac"},
         "webm carries only opus audio, not 'aac'"),
    ],
)  # fmt: skip
def test_bad_audio_choices_name_the_problem(output: str, op: dict[str, Any], needle: str) -> None:
    assert needle in _refused(output, **op)


def test_audio_only_refuses_a_hardware_accel() -> None:
    doc = {"job_id": "j1", "input": "file:///in.mp4", "output": "file:///o/x.m4a",
           "operation": {"op": "transcode"}, "requirements": {"accel": "vaapi"}}  # fmt: skip
    with pytest.raises(DecodeError, match="an output without video needs no vaapi encoder"):
        JOB_DECODER.decode(json.dumps(doc).encode())


#: The transcode fields of the release before the picture and audio options.
OLDER_FIELDS = {
    "op", "codec", "rate_control", "crf", "bitrate_kbps", "preset", "width", "height", "fps",
    "audio_codec", "audio_bitrate_kbps", "container", "video_stream", "audio_stream", "hw_decode",
}  # fmt: skip


def test_a_job_without_new_options_encodes_as_an_older_node_reads_it() -> None:
    job = _decode("file:///o/x.webm", codec="vp9", crf=40, height=720)
    doc = json.loads(encode(job))["operation"]
    assert doc == {"op": "transcode", "codec": "vp9", "crf": 40, "height": 720,
                   "audio_codec": "opus", "container": "webm"}  # fmt: skip
    assert set(doc) <= OLDER_FIELDS
    # Options a job does use travel, and come back the same.
    job = _decode("file:///o/x.mp4", start_seconds=2.0, deinterlace=True, hdr="tonemap")
    doc = json.loads(encode(job))["operation"]
    assert (doc["start_seconds"], doc["deinterlace"], doc["hdr"]) == (2.0, True, "tonemap")
    assert JOB_DECODER.decode(encode(job)) == job


@pytest.mark.parametrize(
    ("output", "op", "needle"),
    [
        ("file:///o/x.mp4", {"audio_codec": "copy"}, "`loudness` needs re-encoded audio, not "
         "`audio_codec` 'copy'"),
        ("file:///o/x.m4a", {"audio_codec": "copy"}, "not `audio_codec` 'copy'"),
        ("file:///o/x.mkv", {"audio_codec": "none"}, "not `audio_codec` 'none'"),
        ("file:///o/x.mp4", {"audio_stream": None}, "not `audio_stream` null"),
        ("file:///o/x.mp4", {"loudness": {"integrated": -4}}, "$.operation.loudness.integrated"),
        ("file:///o/x.mp4", {"loudness": {"integrated": -71}}, "$.operation.loudness.integrated"),
        ("file:///o/x.mp4", {"loudness": {"true_peak": 0.5}}, "$.operation.loudness.true_peak"),
        ("file:///o/x.mp4", {"loudness": {"true_peak": -10}}, "$.operation.loudness.true_peak"),
        ("file:///o/x.mp4", {"loudness": {"lra": 0.5}}, "$.operation.loudness.lra"),
        ("file:///o/x.mp4", {"loudness": {"lra": 51}}, "$.operation.loudness.lra"),
        ("file:///o/x.mp4", {"loudness": {"i": -23}}, "$.operation.loudness"),
    ],
)  # fmt: skip
def test_loudness_needs_re_encoded_audio_and_sane_targets(
    output: str, op: dict[str, Any], needle: str
) -> None:
    op = {"loudness": {"integrated": -23}} | op
    assert needle in _refused(output, **op)


def test_loudness_round_trips_with_its_defaults() -> None:
    job = _decode("file:///o/x.ogg", loudness={"integrated": -16})
    target = job.operation.loudness
    assert (target.integrated, target.true_peak, target.lra) == (-16.0, -1.0, 7.0)
    assert JOB_DECODER.decode(encode(job)) == job
    edges = {"integrated": -70, "true_peak": 0, "lra": 50}
    assert _decode("file:///o/x.mkv", audio_tracks="all", loudness=edges).operation.loudness
