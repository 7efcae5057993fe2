"""Audio-only transcodes and audio choices on real ffmpeg, checked by probing the output."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from daemon.errors import InputError
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.probe import probe_media
from tests.support.media import run_ffmpeg
from tests.support.probing import stream_lines
from tests.support.transcodejob import run_job


@pytest_asyncio.fixture(scope="module")
async def tone(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """2 s of a 1 kHz tone, stereo AAC at 48 kHz, in M4A: no video at all."""
    out = media_dir / "tone.m4a"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=48000:duration=2",
        "-ac", "2", "-c:a", "aac", "-b:a", "96k", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest_asyncio.fixture(scope="module")
async def two_languages(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """1 s of video with two audio tracks: English (mono, 440 Hz), then French (stereo)."""
    out = media_dir / "two_languages.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=160x120:rate=25:duration=1",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=1",
        "-f", "lavfi", "-i", "sine=frequency=1000:sample_rate=44100:duration=1",
        "-map", "0:v", "-map", "1:a", "-map", "2:a",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac:a:1", "2",
        "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest.mark.parametrize(
    ("name", "container", "codec"),
    [("x.ogg", "ogg", "opus"), ("x.opus", "ogg", "opus"), ("x.mp3", "mp3", "mp3"),
     ("x.m4a", "mp4", "aac")],
)  # fmt: skip
async def test_an_audio_only_input_transcodes_by_extension(
    ffmpeg_tools: FfmpegTools, tone: Path, tmp_path: Path, media_dir: Path,
    name: str, container: str, codec: str,
) -> None:  # fmt: skip
    out = tmp_path / "out" / name
    result = await run_job(ffmpeg_tools, tmp_path, [media_dir], tone, out)
    info = await probe_media(ffmpeg_tools, out)
    assert container in info.container.split(",")
    [audio] = info.streams
    assert (audio.type, audio.codec, audio.channels) == ("audio", codec, 2)
    assert info.duration_s is not None and abs(info.duration_s - 2.0) < 0.1
    assert result.encoder == {"opus": "libopus", "mp3": "libmp3lame", "aac": "aac"}[codec]
    assert result.media_seconds == 2.0


async def test_channel_layout_and_sample_rate(
    ffmpeg_tools: FfmpegTools, tone: Path, tmp_path: Path, media_dir: Path
) -> None:
    mono = tmp_path / "out" / "mono.mp3"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], tone, mono, audio_layout="mono",
                  audio_sample_rate=22050, audio_bitrate_kbps=64)  # fmt: skip
    [audio] = (await probe_media(ffmpeg_tools, mono)).streams
    assert (audio.codec, audio.channels, audio.sample_rate) == ("mp3", 1, 22050)
    surround = tmp_path / "out" / "surround.m4a"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], tone, surround, audio_layout="5.1",
                  audio_sample_rate=44100)  # fmt: skip
    [audio] = (await probe_media(ffmpeg_tools, surround)).streams
    assert (audio.codec, audio.channels, audio.sample_rate) == ("aac", 6, 44100)


async def test_audio_out_of_a_video_and_trimmed(
    ffmpeg_tools: FfmpegTools, clip: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "a.ogg"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], clip, out, start_seconds=0.5,
                  duration_seconds=1.0)  # fmt: skip
    info = await probe_media(ffmpeg_tools, out)
    assert [s.codec for s in info.streams] == ["opus"]
    assert info.duration_s is not None and abs(info.duration_s - 1.0) < 0.1


async def test_a_video_output_of_an_audio_only_input_says_what_to_do(
    ffmpeg_tools: FfmpegTools, tone: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "x.mp4"
    with pytest.raises(InputError, match=r"no video stream #0 \(0 found\); for audio only"):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], tone, out)
    # The same input into mp4 without video works when the job says so.
    await run_job(ffmpeg_tools, tmp_path, [media_dir], tone, out, codec="none")
    assert [s.codec for s in (await probe_media(ffmpeg_tools, out)).streams] == ["aac"]


async def test_an_audio_track_chosen_by_language(
    ffmpeg_tools: FfmpegTools, two_languages: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "fr.mkv"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], two_languages, out, audio_language="fra")
    lines = await stream_lines(ffmpeg_tools.ffmpeg, out)
    assert len(lines) == 2 and "Video: h264" in lines[0]
    assert "(fra): Audio: aac" in lines[1] and "44100 Hz, stereo" in lines[1]
    default = tmp_path / "out" / "first.m4a"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], two_languages, default)
    [line] = await stream_lines(ffmpeg_tools.ffmpeg, default)
    assert "(eng): Audio: aac" in line and "48000 Hz, mono" in line
    with pytest.raises(InputError, match="matches no streams"):
        await run_job(ffmpeg_tools, tmp_path, [media_dir], two_languages,
                      tmp_path / "out" / "de.m4a", audio_language="deu")  # fmt: skip


async def test_every_audio_track_kept_with_its_language(
    ffmpeg_tools: FfmpegTools, two_languages: Path, tmp_path: Path, media_dir: Path
) -> None:
    out = tmp_path / "out" / "all.mkv"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], two_languages, out, audio_tracks="all",
                  audio_codec="opus", audio_sample_rate=48000)  # fmt: skip
    lines = await stream_lines(ffmpeg_tools.ffmpeg, out)
    assert [line.split(": ")[1] for line in lines] == ["Video", "Audio", "Audio"]
    assert "(eng): Audio: opus" in lines[1] and "(fra): Audio: opus" in lines[2]
    assert "48000 Hz, mono" in lines[1] and "48000 Hz, stereo" in lines[2]
    only_audio = tmp_path / "out" / "all.m4a"
    await run_job(ffmpeg_tools, tmp_path, [media_dir], two_languages, only_audio,
                  audio_tracks="all")  # fmt: skip
    info = await probe_media(ffmpeg_tools, only_audio)
    assert [(s.type, s.codec) for s in info.streams] == [("audio", "aac"), ("audio", "aac")]
