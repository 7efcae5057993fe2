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
    assert "webm carries only `opus` audio" in _refused(
        "file:///o/x.webm", codec="vp9", audio_codec="aac"
    )
