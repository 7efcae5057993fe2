"""A chunked encode's jobs on real ffmpeg: the chunks encoded by the transcode operation, the
audio once, then the concat operation joins and verifies; corrupt or missing chunks fail it.

Each step's job is the one `ChunkedSpec.expand()` makes, run through `run_operation` in the
workflow's order (the fleet test runs the same workflow on several nodes).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from control.topology import refuse_rollups
from daemon.errors import InputError, InvalidJob
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.access import MediaAccess
from daemon.media.objstore import download, upload
from daemon.ops import run_operation
from daemon.ops.context import JobContext, JobHandle
from schemas.chunked import ChunkedSpec
from schemas.jobs import JobSpec
from schemas.results import ConcatReport, JobResult
from tests.support.media import make_clip, run_ffmpeg
from tests.support.transcodejob import SOFTWARE

FPS = 25


async def _run(
    tools: FfmpegTools,
    scratch: Path,
    roots: list[Path],
    spec: JobSpec,
    media: MediaAccess | None = None,
) -> JobResult:
    await asyncio.to_thread(scratch.mkdir, parents=True, exist_ok=True)

    async def progress(_: Any) -> None:
        pass

    ctx = JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=SOFTWARE, hwaccels=frozenset(), threads=2, allowed_roots=roots,
        progress=progress, media=media or MediaAccess(),
    )  # fmt: skip
    return await asyncio.wait_for(run_operation(ctx), 180)


@pytest.fixture(scope="module")
def source(ffmpeg_tools: FfmpegTools, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """7 s, 160x120, 25 fps: 2.5 s chunks end between frames (62.5 frames each)."""
    out = tmp_path_factory.mktemp("chunked-src") / "source.mp4"
    return asyncio.run(make_clip(ffmpeg_tools.ffmpeg, out, seconds=7, size="160x120", fps=FPS))


def _chunked(src: Path, out: Path, **over: Any) -> ChunkedSpec:
    doc: dict[str, Any] = {
        "workflow_id": "wf-1", "input": src.as_uri(), "output": out.as_uri(),
        "duration_seconds": 7.0, "chunk_seconds": 2.5, "preset": "ultrafast", "crf": 28,
        "gop_size": 25, **over,
    }  # fmt: skip
    return msgspec.convert(doc, ChunkedSpec)


async def _encode_steps(tools: FfmpegTools, tmp: Path, chunked: ChunkedSpec) -> dict[str, JobSpec]:
    """Run every step but the join; the join's job spec comes back with them."""
    jobs = chunked.expand().jobs()
    roots = [tmp, Path(chunked.input.removeprefix("file://")).parent]
    for name, spec in jobs.items():
        if name != "join":
            await _run(tools, tmp / "scratch" / name, roots, spec)
    return jobs


async def _frames(tools: FfmpegTools, path: Path) -> int:
    """Video frames decoded from `path`, counted by ffmpeg (framecrc writes one line each)."""
    out = path.with_suffix(".frames")
    code, err = await run_ffmpeg(
        tools.ffmpeg, "-loglevel", "error", "-y", "-i", str(path), "-map", "0:v:0",
        "-f", "framecrc", str(out),
    )  # fmt: skip
    assert code == 0, err.decode(errors="replace")
    text = await asyncio.to_thread(out.read_text)
    return sum(1 for line in text.splitlines() if line.startswith("0,"))


async def _decode_errors(tools: FfmpegTools, path: Path) -> str:
    code, err = await run_ffmpeg(tools.ffmpeg, "-loglevel", "error", "-i", str(path),
                                 "-f", "null", "-")  # fmt: skip
    assert code == 0
    return err.decode(errors="replace")


async def test_chunks_join_into_the_whole_encode(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "film.mp4"
    chunked = _chunked(source, out)
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, chunked)
    result = await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])
    report = result.concat
    assert isinstance(report, ConcatReport)
    source_frames = await _frames(ffmpeg_tools, source)
    assert source_frames == 7 * FPS
    # Every source frame is in exactly one chunk: 2.5 s borders fall between frames.
    assert report.chunks == 3 and sum(report.chunk_frames) == source_frames
    assert report.frames == source_frames
    assert await _frames(ffmpeg_tools, out) == source_frames
    assert report.video_seconds == pytest.approx(7.0, abs=0.5 / FPS)
    assert report.audio_seconds is not None and report.audio_seconds == pytest.approx(7.0, abs=0.05)
    assert report.av_drift_ms is not None and report.av_drift_ms <= 100
    assert [b.chunk for b in report.borders] == [1, 2]
    assert all(b.keyframe and abs(b.gap_ms) < 1 for b in report.borders)
    assert report.decode_errors == 0
    assert await _decode_errors(ffmpeg_tools, out) == ""
    assert [o.uri for o in result.outputs] == [out.as_uri()]
    # The joined file is what a player gets: one video and one audio stream, the chunks' codec.
    _, banner = await run_ffmpeg(ffmpeg_tools.ffmpeg, "-i", str(out))
    text = banner.decode(errors="replace")
    assert text.count("Video: h264") == 1 and text.count("Audio: aac") == 1


async def test_a_video_only_chunked_encode_joins_without_audio(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "film.mkv"
    chunked = _chunked(source, out, audio_codec="none", chunk_seconds=3.2, codec="hevc")
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, chunked)
    assert "audio" not in jobs
    result = await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])
    report = result.concat
    assert report is not None and report.chunks == 2  # 7 s in 3.2 s chunks: the 0.6 s tail joins
    assert report.frames == 7 * FPS and report.audio_seconds is None
    assert await _frames(ffmpeg_tools, out) == 7 * FPS


async def test_a_missing_chunk_fails_the_join_and_names_it(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "film.mp4"
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, _chunked(source, out))
    await asyncio.to_thread((tmp_path / "film.c01.mp4").unlink)
    with pytest.raises(InputError, match=r"chunk 1: .*does not exist"):
        await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])
    assert not out.exists()


async def test_a_corrupt_chunk_fails_verification(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "film.mp4"
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, _chunked(source, out))
    # Garbage over the middle chunk's frames: its index is intact, its pictures are not.
    chunk = tmp_path / "film.c01.mp4"
    data = bytearray(await asyncio.to_thread(chunk.read_bytes))
    for at in range(len(data) // 4, len(data) - 400, 1500):
        data[at : at + 200] = b"\xff" * 200
    await asyncio.to_thread(chunk.write_bytes, bytes(data))
    with pytest.raises(InputError, match="joined file"):
        await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])
    assert not out.exists()


async def test_a_shortened_chunk_fails_the_drift_check(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    # A chunk with frames missing at its end (cut by stream copy: still a valid file) joins
    # cleanly, but the audio no longer lines up with the video.
    out = tmp_path / "film.mp4"
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, _chunked(source, out))
    chunk, cut = tmp_path / "film.c02.mp4", tmp_path / "cut.mp4"
    code, err = await run_ffmpeg(ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y", "-i",
                                 str(chunk), "-c", "copy", "-t", "1", str(cut))  # fmt: skip
    assert code == 0, err.decode(errors="replace")
    await asyncio.to_thread(cut.replace, chunk)
    with pytest.raises(InputError, match="drift"):
        await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])


async def test_chunks_encoded_unalike_are_refused(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    out = tmp_path / "film.mp4"
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, _chunked(source, out))
    other = await make_clip(ffmpeg_tools.ffmpeg, tmp_path / "other.mp4", seconds=2)  # 320x240
    await asyncio.to_thread(other.replace, tmp_path / "film.c01.mp4")
    with pytest.raises(InvalidJob, match="chunk 1 has width 320"):
        await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])


async def test_a_29_97_fps_source_with_b_frames_splits_exactly(
    ffmpeg_tools: FfmpegTools, tmp_path: Path
) -> None:
    # NTSC timing (borders never fall on a frame), B-frames (decode order is not display
    # order) and one long GOP (every border needs a seek back to the first keyframe).
    src = tmp_path / "ntsc.mp4"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=30000/1001:duration=5",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100:duration=5",
        "-c:v", "libx264", "-preset", "fast", "-bf", "3", "-g", "250", "-pix_fmt", "yuv420p",
        "-c:a", "aac", "-shortest", str(src),
    )  # fmt: skip
    assert code == 0, err.decode(errors="replace")
    out = tmp_path / "film.mp4"
    chunked = _chunked(src, out, duration_seconds=5.0, chunk_seconds=1.7, preset="fast")
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, chunked)
    result = await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])
    report = result.concat
    source_frames = await _frames(ffmpeg_tools, src)
    assert report is not None and report.chunks == 3
    assert sum(report.chunk_frames) == report.frames == source_frames
    assert await _frames(ffmpeg_tools, out) == source_frames
    assert all(b.keyframe and abs(b.gap_ms) < 1 for b in report.borders)


async def test_chunks_travel_through_the_object_store(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path, nc: NATS, prefix: str
) -> None:
    # No shared filesystem: every step downloads its inputs and uploads its output, and the
    # join downloads each chunk into its own scratch.
    js = nc.jetstream(timeout=10)
    bucket = f"{prefix}_media"
    await js.create_object_store(bucket)
    await refuse_rollups(js, bucket)
    await upload(js, bucket, "in/film.mp4", source, within=30)
    media = MediaAccess(js=js, buckets=frozenset({bucket}))
    chunked = _chunked(source, tmp_path / "unused.mp4", input=f"nats-obj://{bucket}/in/film.mp4",
                       output=f"nats-obj://{bucket}/out/film.mp4")  # fmt: skip
    for name, spec in chunked.expand().jobs().items():
        result = await _run(ffmpeg_tools, tmp_path / name, [tmp_path], spec, media)
    assert [o.uri for o in result.outputs] == [f"nats-obj://{bucket}/out/film.mp4"]
    assert result.concat is not None and result.concat.frames == 7 * FPS
    local = tmp_path / "joined.mp4"
    await download(js, bucket, "out/film.mp4", local, cap=10**9, within=30)
    assert await _frames(ffmpeg_tools, local) == 7 * FPS


async def test_hevc_in_mp4_is_tagged_hvc1(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    # The chunks carry hev1 (parameter sets in the stream); Apple players want hvc1.
    out = tmp_path / "film.mp4"
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, _chunked(source, out, codec="hevc",
                                                                chunk_seconds=3.5))  # fmt: skip
    result = await _run(ffmpeg_tools, tmp_path / "scratch" / "join", [tmp_path], jobs["join"])
    assert result.concat is not None and result.concat.frames == 7 * FPS
    _, banner = await run_ffmpeg(ffmpeg_tools.ffmpeg, "-i", str(out))
    assert "Video: hevc (Main) (hvc1" in banner.decode(errors="replace")


async def test_a_chunk_that_is_itself_a_concat_list_is_refused(
    ffmpeg_tools: FfmpegTools, source: Path, tmp_path: Path
) -> None:
    # The join's run allows the concat demuxer; a chunk is probed without it first, so a list
    # posing as a chunk (naming a file outside the roots) never reaches that run.
    out = tmp_path / "film.mp4"
    jobs = await _encode_steps(ffmpeg_tools, tmp_path, _chunked(source, out))
    text = f"ffconcat version 1.0\nfile 'file:{source}'\n"
    await asyncio.to_thread((tmp_path / "film.c01.mp4").write_text, text)
    roots = [tmp_path]  # the source's folder is not one of them
    with pytest.raises(InputError, match="chunk 1: "):
        await _run(ffmpeg_tools, tmp_path / "scratch" / "join", roots, jobs["join"])
    assert not out.exists()
