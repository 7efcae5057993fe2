"""Chunked encodes: how a ChunkedSpec expands into a workflow, its chunk borders and refusals,
and the concat operation's schema rules and packet measures (pure)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import msgspec
import pytest

from control.cli.main import build_parser
from control.cli.workflows import chunked_spec
from control.errors import BadInput
from daemon.ops.concat import Packet, Packets, list_text, measure, parse_framecrc
from schemas.chunked import MAX_CHUNKS, ChunkedSpec, chunk_count, sibling
from schemas.codec import DecodeError, Decoder
from schemas.jobs import JobSpec
from schemas.operations import Concat, Transcode

DECODER: Decoder[ChunkedSpec] = Decoder(ChunkedSpec, "chunked encode")
SRC, OUT = "file:///media/film.mov", "file:///out/film.mp4"


def spec(**over: Any) -> ChunkedSpec:
    doc = {"workflow_id": "film-1", "input": SRC, "output": OUT, "duration_seconds": 600.0,
           "chunk_seconds": 60.0, **over}  # fmt: skip
    return DECODER.decode(msgspec.json.encode(doc))


def refused(**over: Any) -> str:
    with pytest.raises(DecodeError) as info:
        spec(**over)
    return str(info.value)


def test_ten_minutes_in_one_minute_chunks_is_ten_chunks_audio_and_a_join() -> None:
    flow = spec(tenant="acme", priority="high", crf=20, preset="slow", height=720).expand()
    names = [s.name for s in flow.steps]
    assert names == [f"c{i:02d}" for i in range(10)] + ["audio", "join"]
    jobs = flow.jobs()
    assert {j.tenant for j in jobs.values()} == {"acme"}
    assert {j.priority for j in jobs.values()} == {"high"}
    for i in range(10):
        job = jobs[f"c{i:02d}"]
        op = job.operation
        assert isinstance(op, Transcode)
        assert job.input == SRC and job.output == f"file:///out/film.c{i:02d}.mp4"
        assert op.start_seconds == (i * 60.0 or None)
        assert op.duration_seconds == (None if i == 9 else 60.0)
        # Even quality across chunks, a keyframe at every border, no audio in a chunk.
        assert (op.rate_control, op.crf, op.preset, op.height) == ("crf", 20, "slow", 720)
        assert op.gop_size == 48 and op.closed_gop
        assert op.audio_stream is None and op.video_codec == "h264"
        # One encoder family for every chunk: a GPU node must not encode some with NVENC.
        assert job.requirements.accel == "software"
    audio = jobs["audio"].operation
    assert isinstance(audio, Transcode)
    assert audio.video_codec == "none" and audio.settled_audio == "aac"
    assert jobs["audio"].output == "file:///out/film.audio.m4a"
    assert jobs["audio"].input == SRC and audio.start_seconds is None
    join = jobs["join"]
    assert isinstance(join.operation, Concat)
    assert join.operation.chunks == [f"file:///out/film.c{i:02d}.mp4" for i in range(10)]
    assert join.operation.audio == "file:///out/film.audio.m4a"
    assert join.input == join.operation.chunks[0] and join.output == OUT
    assert flow.steps[-1].needs == [*names[:-1]]
    assert join.job_id == "film-1--join"


def test_chunk_borders_cover_the_input_and_the_last_runs_to_its_end() -> None:
    borders = spec(duration_seconds=7.0, chunk_seconds=2.5).borders()
    assert borders == [(0.0, 2.5), (2.5, 2.5), (5.0, None)]
    # A tail under a quarter chunk joins the chunk before: no sliver of a chunk.
    assert spec(duration_seconds=7.0, chunk_seconds=3.2).borders() == [(0.0, 3.2), (3.2, None)]
    assert spec(duration_seconds=6.0, chunk_seconds=2.0).borders() == [
        (0.0, 2.0), (2.0, 2.0), (4.0, None),
    ]  # fmt: skip
    assert spec(duration_seconds=30.0, chunk_seconds=60.0).borders() == [(0.0, None)]
    starts = [s for s, _ in spec(duration_seconds=3600.0, chunk_seconds=210.0).borders()]
    assert starts == [round(i * 210.0, 6) for i in range(17)]


@pytest.mark.parametrize(
    ("duration", "chunk", "count"),
    [(600, 60, 10), (615, 60, 10), (616, 60, 11), (60, 60, 1), (1, 60, 1), (6, 2, 3)],
)
def test_chunk_count(duration: float, chunk: float, count: int) -> None:
    assert chunk_count(duration, chunk) == count


def test_too_many_chunks_are_refused_with_the_least_chunk_length() -> None:
    assert MAX_CHUNKS == 18
    assert len(spec(duration_seconds=18 * 60.0).expand().steps) == 20
    text = refused(duration_seconds=7200.0, chunk_seconds=60.0)
    assert "120 chunks, over the 18 a workflow holds" in text
    assert "chunk_seconds of at least 395" in text
    assert chunk_count(7200.0, 395.0) <= MAX_CHUNKS


def test_refusals_name_the_problem() -> None:
    assert "writes .mp4, .m4v, .mov, .mkv, not .webm" in refused(output="file:///o/f.webm")
    assert "not a signed URL" in refused(output="https://up.example/f.mp4?sig=1")
    assert "codec" in refused(codec="av1")
    assert "chunk_seconds" in refused(chunk_seconds=0.5)
    assert "duration_seconds" in refused(duration_seconds=0)


def test_without_audio_there_is_no_audio_step_and_the_join_muxes_none() -> None:
    flow = spec(audio_codec="none", duration_seconds=120.0).expand()
    assert [s.name for s in flow.steps] == ["c00", "c01", "join"]
    join = flow.jobs()["join"].operation
    assert isinstance(join, Concat) and join.audio is None


def test_audio_and_join_take_the_pool_but_not_the_encoder_requirement() -> None:
    req = {"accel": "nvenc", "labels": {"site": "ams"}}
    jobs = spec(requirements=req, codec="hevc").expand().jobs()
    assert jobs["c00"].requirements.accel == "nvenc" and jobs["c00"].pool == "nvenc"
    for name in ("audio", "join"):
        assert jobs[name].requirements.accel == "auto"
        assert jobs[name].pool == "nvenc" and jobs[name].requirements.labels == {"site": "ams"}


def test_chunk_files_sit_next_to_the_output_whatever_the_scheme() -> None:
    assert sibling("s3://bucket/a/film.mkv", ".c03.mkv") == "s3://bucket/a/film.c03.mkv"
    assert sibling("nats-obj://media/film.mp4", ".audio.m4a") == "nats-obj://media/film.audio.m4a"
    uris = spec(output="s3://bucket/x/film.mkv", duration_seconds=120.0).chunk_uris()
    assert uris == ["s3://bucket/x/film.c00.mkv", "s3://bucket/x/film.c01.mkv"]


def test_a_concat_jobs_input_is_its_first_chunk_and_its_output_a_video_container() -> None:
    op = {"op": "concat", "chunks": ["file:///c/0.mp4", "file:///c/1.mp4"]}

    def job(**over: Any) -> JobSpec:
        doc = {"job_id": "j", "input": "file:///c/0.mp4", "output": "file:///o.mp4",
               "operation": op, **over}  # fmt: skip
        return msgspec.convert(doc, JobSpec)

    assert job().operation == Concat(chunks=["file:///c/0.mp4", "file:///c/1.mp4"])
    with pytest.raises(ValueError, match="first chunk"):
        job(input="file:///c/1.mp4")
    with pytest.raises(ValueError, match=r"not \.webm"):
        job(output="file:///o.webm")
    with pytest.raises(msgspec.ValidationError):
        job(operation={"op": "concat", "chunks": []})


FRAMECRC = """#tb 0: 1/12800
#media_type 0: video
#tb 1: 1/48000
#media_type 1: audio
1,      -1024,      -1024,     1024,      265, 0x91c97a9b, F=0x5, S=1, Skip Samples,       10
0,          0,          0,      512,     4734, 0x17cc5c91
1,          0,          0,     1024,      234, 0x53367ef6
0,        512,       1024,      512,     1180, 0xe54d3fdc, F=0x0
0,       1024,        512,      512,     1180, 0xe54d3fdc, F=0x0
1,       1024,       1024,     1024,      154, 0x471c48c5
"""


def test_framecrc_packets_keep_flags_and_time_bases() -> None:
    found = parse_framecrc(FRAMECRC)
    assert found.video_tb == Fraction(1, 12800) and found.audio_tb == Fraction(1, 48000)
    assert [p.flags for p in found.video] == [1, 0, 0]
    assert found.audio[0] == Packet(-1024, -1024, 1024, 5)
    assert found.video_seconds == pytest.approx(1536 / 12800)


def _video(starts: list[int], key_at: set[int], step: int = 512) -> list[Packet]:
    return [Packet(s, s, step, 1 if i in key_at else 0) for i, s in enumerate(starts)]


def test_measure_reports_borders_gaps_and_drift() -> None:
    # Three chunks of 4, 4 and 2 frames at 25 fps (512 ticks of 1/12800); the third starts one
    # frame late, and the audio ends 0.1 s after the video.
    starts = [i * 512 for i in range(8)] + [9 * 512, 10 * 512]
    video = _video(starts, {0, 4, 8})
    audio = [Packet(-1024, -1024, 1024, 5)] + [
        Packet(i * 1024, i * 1024, 1024, 1) for i in range(22)
    ]
    packets = Packets(video, Fraction(1, 12800), audio, Fraction(1, 48000))
    report = measure(packets, [4, 4, 2], 0.4, decoded=10, errors=0)
    assert [b.chunk for b in report.borders] == [1, 2]
    assert report.borders[0].keyframe and report.borders[0].gap_ms == 0
    assert report.borders[1].gap_ms == pytest.approx(40.0) and report.borders[1].at_seconds == 0.36
    assert report.video_seconds == pytest.approx(0.44)
    # The priming packet (discarded) does not count: audio is 22 * 1024 samples from 0.
    assert report.audio_seconds == pytest.approx(22 * 1024 / 48000, abs=1e-6)
    assert report.av_drift_ms == pytest.approx(abs(22 * 1024 / 48000 - 0.44) * 1000, abs=1e-3)
    assert report.chunk_frames == [4, 4, 2] and report.frames == 10


def test_the_concat_list_quotes_every_path() -> None:
    text = list_text([Path("/m/a.mp4"), Path("/m/it's.mp4")])
    assert text == "ffconcat version 1.0\nfile 'file:/m/a.mp4'\nfile 'file:/m/it'\\''s.mp4'\n"


def _cli(*argv: str) -> ChunkedSpec:
    args = build_parser().parse_args(["chunked", "submit", *argv])
    return chunked_spec(args)


def test_the_cli_flags_make_the_spec(tmp_path: Path) -> None:
    got = _cli("in.mov", str(tmp_path / "out.mkv"), "--duration", "3600", "--chunk-seconds",
               "240", "--codec", "hevc", "--crf", "26", "--preset", "slow", "--height", "1080",
               "--gop-size", "50", "--audio-bitrate", "96", "--workflow-id", "film-2",
               "--tenant", "acme", "--accel", "software", "--pool", "batch")  # fmt: skip
    assert got.input == (Path.cwd() / "in.mov").as_uri()
    assert got.output == (tmp_path / "out.mkv").as_uri()
    assert (got.duration_seconds, got.chunk_seconds, got.codec, got.crf) == (3600, 240, "hevc", 26)
    assert (got.preset, got.height, got.gop_size, got.audio_bitrate_kbps) == ("slow", 1080, 50, 96)
    assert (got.workflow_id, got.tenant) == ("film-2", "acme")
    assert (got.requirements.accel, got.requirements.pool) == ("software", "batch")
    assert len(got.expand().steps) == 17  # 15 chunks, the audio, the join
    assert _cli("a.mp4", "b.mp4", "--duration", "5").workflow_id.startswith("chunked-")


def test_the_cli_refuses_what_the_schema_refuses() -> None:
    with pytest.raises(BadInput, match="over the 18 a workflow holds"):
        _cli("a.mp4", "b.mp4", "--duration", "7200")
    with pytest.raises(BadInput, match=r"not \.webm"):
        _cli("a.mp4", "b.webm", "--duration", "60")
