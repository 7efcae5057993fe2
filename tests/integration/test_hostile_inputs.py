"""A hostile-input corpus against the real operations and ffmpeg: each case is refused or fails
cleanly (a permanent JobError with a reason), reads nothing outside the roots and never hangs.

Files outside the roots that a playlist points at are FIFOs with no writer: had ffmpeg opened
one, it would block until the probe timeout, so a refusal that is *not* a timeout shows that it
never tried. Every run is bounded by the probe timeout and the job's hard timeout.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon.config import MediaSettings
from daemon.errors import InputError, JobError, PathRefused
from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools
from daemon.job.handle import JobHandle
from daemon.media.access import MediaAccess
from daemon.ops import run_operation
from daemon.ops.context import JobContext
from schemas.jobs import JobSpec
from schemas.operations import Operation, Probe, Transcode
from tests.support.media import run_ffmpeg

PROBE_S = 20.0


async def _no_progress(update: ProgressUpdate) -> None:
    return None


def _ctx(
    tools: FfmpegTools, tmp: Path, spec: JobSpec, limits: MediaSettings | None = None
) -> JobContext:
    scratch = tmp / "scratch"
    scratch.mkdir(exist_ok=True)
    limits = limits or MediaSettings(probe_timeout=PROBE_S)
    return JobContext(
        handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=tools,
        verified_encoders=frozenset({"libx264", "aac"}), hwaccels=frozenset(), threads=1,
        allowed_roots=[tmp / "root"], progress=_no_progress,
        media=MediaAccess(limits=limits),
    )  # fmt: skip


def _spec(uri: str, op: Operation | None = None, out: str | None = None) -> JobSpec:
    op = op or Probe()
    if out is None and not isinstance(op, Probe):
        out = "file:///nonexistent/out.mp4"
    return JobSpec(job_id="hostile1", input=uri, output=out, operation=op)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").mkdir()
    return tmp_path / "root"


async def _read(path: Path) -> bytes:
    return await asyncio.to_thread(path.read_bytes)


def _trap(path: Path) -> Path:
    """A FIFO outside the roots: opening it for reading would block (no writer ever comes)."""
    os.mkfifo(path)
    return path


async def _refused(ctx: JobContext) -> JobError:
    with pytest.raises(JobError) as info:
        async with asyncio.timeout(PROBE_S * 3):
            await run_operation(ctx)
    error = info.value
    assert error.kind == "permanent", error.reason
    assert "longer than" not in error.reason  # refused, not stuck on a trap
    return error


async def test_hls_playlist_reading_local_files_is_refused(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path
) -> None:
    trap = _trap(tmp_path / "outside" / "secret.ts")
    playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n"
    playlist += f"#EXTINF:1,\n{trap}\n#EXTINF:1,\n../outside/secret.ts\n#EXT-X-ENDLIST\n"
    for name in ("evil.m3u8", "evil.mp4"):  # by extension, and disguised as MP4
        (root / name).write_text(playlist)
        error = await _refused(_ctx(ffmpeg_tools, tmp_path, _spec((root / name).as_uri())))
        assert isinstance(error, InputError), error.reason
        if name.endswith(".m3u8"):  # ffmpeg recognises the playlist; the allow-list refuses it
            assert "not an allowed media format" in error.reason, error.reason


async def test_concat_list_reading_local_files_is_refused(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path
) -> None:
    trap = _trap(tmp_path / "outside" / "secret.mp4")
    lines = f"ffconcat version 1.0\nfile /etc/passwd\nfile '{trap}'\nfile ../outside/secret.mp4\n"
    (root / "list.ffconcat").write_text(lines)
    (root / "loop.txt").write_text("ffconcat version 1.0\nfile loop.txt\nfile loop.txt\n")
    for name in ("list.ffconcat", "loop.txt"):
        spec = _spec((root / name).as_uri(), Transcode(codec="h264"), (root / "o.mp4").as_uri())
        error = await _refused(_ctx(ffmpeg_tools, tmp_path, spec))
        assert "not an allowed media format" in error.reason, error.reason
    assert not (root / "o.mp4").exists()


@pytest.mark.parametrize(
    "uri",
    [
        "concat:/etc/passwd|/etc/hosts",
        "subfile,,start,0,end,100,,:/etc/passwd",
        "lavfi:testsrc=size=64x64",
        "lavfi://testsrc",
        "pipe:0",
        "/etc/passwd",
        "file:///etc/passwd",
        "http://127.0.0.1:1/x.mp4",  # http is off unless hosts are allow-listed
        "nats-obj://flotilla_media/x.mp4",  # no object store handle on this context
    ],
)
async def test_protocol_and_path_tricks_are_refused_before_ffmpeg(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path, uri: str
) -> None:
    error = await _refused(_ctx(ffmpeg_tools, tmp_path, _spec(uri)))
    assert isinstance(error, PathRefused)


async def test_protocol_looking_file_name_is_only_a_file(
    ffmpeg_tools: FfmpegTools, clip: Path, root: Path, tmp_path: Path
) -> None:
    name = root / "concat:x.mp4|-y subfile,,"
    name.write_bytes(await _read(clip))
    result = await run_operation(_ctx(ffmpeg_tools, tmp_path, _spec(name.as_uri())))
    assert result.probe is not None and result.probe.duration_s


async def test_pipe_in_the_roots_is_refused_without_blocking(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path
) -> None:
    fifo = _trap(root / "endless.mp4")
    error = await _refused(_ctx(ffmpeg_tools, tmp_path, _spec(fifo.as_uri())))
    assert "not a regular file" in error.reason


async def test_stream_without_known_end_is_refused(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path
) -> None:
    raw = root / "raw.h264"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i",
        "testsrc2=size=64x48:duration=0.4", "-c:v", "libx264", "-f", "h264", str(raw),
    )  # fmt: skip
    assert code == 0, err
    error = await _refused(_ctx(ffmpeg_tools, tmp_path, _spec(raw.as_uri())))
    assert "no known duration" in error.reason


async def test_enormous_dimensions_are_refused_before_work(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path
) -> None:
    # A header claiming 12000x12000 (144 Mpixel) with almost no picture data behind it.
    big = root / "big.y4m"
    big.write_bytes(b"YUV4MPEG2 W12000 H12000 F25:1 Ip A1:1 C420jpeg\nFRAME\n" + b"\x80" * 4096)
    out = root / "big-out.mp4"
    spec = _spec(big.as_uri(), Transcode(codec="h264"), out.as_uri())
    error = await _refused(_ctx(ffmpeg_tools, tmp_path, spec))
    assert "12000x12000" in error.reason and "over the limit" in error.reason
    assert not out.exists()


async def test_garbage_and_truncated_files_fail_cleanly(
    ffmpeg_tools: FfmpegTools, clip: Path, root: Path, tmp_path: Path
) -> None:
    (root / "garbage.mp4").write_bytes(os.urandom(64 * 1024))
    (root / "truncated.mp4").write_bytes((await _read(clip))[:1500])
    (root / "empty.mp4").write_bytes(b"")
    for name in ("garbage.mp4", "truncated.mp4", "empty.mp4"):
        error = await _refused(_ctx(ffmpeg_tools, tmp_path, _spec((root / name).as_uri())))
        assert isinstance(error, InputError), error.reason


@pytest.mark.parametrize(
    ("limits", "needle"),
    [
        (MediaSettings(max_input_bytes=1000), "bytes, over the limit"),
        (MediaSettings(max_streams=1), "streams, over the limit"),
        (MediaSettings(max_duration_s=1.0), "over the limit of 1 s"),
        (MediaSettings(max_pixels=320 * 240 - 1), "pixels per frame"),
        (MediaSettings(demuxers=["matroska"]), "not an allowed media format"),
    ],
)
async def test_configured_limits_refuse_a_normal_clip(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, limits: MediaSettings, needle: str
) -> None:
    (tmp_path / "root").mkdir()
    src = tmp_path / "root" / "clip.mp4"
    src.symlink_to(clip)  # resolved inside the roots? no: the link target is outside them
    spec = _spec(src.as_uri())
    refused = await _refused(_ctx(ffmpeg_tools, tmp_path, spec, limits))
    assert isinstance(refused, PathRefused)
    src.unlink()
    src.write_bytes(await _read(clip))
    error = await _refused(_ctx(ffmpeg_tools, tmp_path, spec, limits))
    assert needle in error.reason, error.reason


async def test_every_ffmpeg_input_runs_under_the_guards(
    ffmpeg_tools: FfmpegTools, clip_small: Path, root: Path, tmp_path: Path
) -> None:
    src = root / "in.mp4"
    src.write_bytes(await _read(clip_small))
    out = root / "out.mp4"
    ctx = _ctx(ffmpeg_tools, tmp_path, _spec(src.as_uri(), Transcode(codec="h264"), out.as_uri()))
    seen: list[list[str]] = []

    async def on_command(encoder: str | None, argv: list[str]) -> None:
        seen.append(argv)

    ctx.on_command = on_command
    await run_operation(ctx)
    assert out.stat().st_size > 0 and seen
    argv = seen[0]
    before_input = argv[: argv.index("-i")]
    for flag in ("-protocol_whitelist", "-format_whitelist", "-max_pixels", "-max_alloc"):
        assert flag in before_input
    assert argv[argv.index("-protocol_whitelist") + 1] == "file"
    assert "hls" not in argv[argv.index("-format_whitelist") + 1].split(",")


async def test_container_must_match_the_extension(
    ffmpeg_tools: FfmpegTools, root: Path, tmp_path: Path
) -> None:
    fake = root / "really-matroska.mp4"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-f", "lavfi", "-i",
        "testsrc2=size=64x48:duration=0.4", "-c:v", "libx264", "-f", "matroska", str(fake),
    )  # fmt: skip
    assert code == 0, err
    error = await _refused(_ctx(ffmpeg_tools, tmp_path, _spec(fake.as_uri())))
    assert "does not match" in error.reason
    allowed = MediaSettings(probe_timeout=PROBE_S, check_extension=False)
    result = await run_operation(_ctx(ffmpeg_tools, tmp_path, _spec(fake.as_uri()), allowed))
    assert result.probe is not None and result.probe.container.startswith("matroska")
