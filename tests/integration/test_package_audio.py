"""Alternate audio tracks in a package, on real ffmpeg: each asked input track encoded once into
an HLS AUDIO group (or a DASH adaptation set per track) that every video rung refers to, named
and tagged for players, beside the WebVTT renditions; refusals name what the input has."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from daemon.errors import InputError
from daemon.ffmpeg.tools import FfmpegTools
from daemon.ops.context import JobContext
from daemon.ops.package import run_package
from schemas.audioopts import AudioRendition
from schemas.operations import Package, Rung
from schemas.results import AudioRenditionReport
from tests.support.media import run_ffmpeg
from tests.support.probing import ffmpeg_output
from tests.support.transcodejob import job_context


@pytest_asyncio.fixture(scope="module")
async def two_tongues(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """2 s of 320x240 video, an English stereo track at 48 kHz, a French mono one at 44.1 kHz
    and an English SubRip track."""
    folder = media_dir / "two-tongues"
    folder.mkdir(exist_ok=True)
    (folder / "eng.srt").write_text("1\n00:00:00,200 --> 00:00:00,900\nHello\n\n")
    out = folder / "src.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
        "-f", "lavfi", "-i", "sine=frequency=660:sample_rate=44100:duration=2",
        "-i", str(folder / "eng.srt"),
        "-map", "0:v", "-map", "1:a", "-map", "2:a", "-map", "3",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-ac:a:0", "2", "-ac:a:1", "1",
        "-c:s", "srt", "-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra",
        "-metadata:s:s:0", "language=eng", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


def _ctx(tools: FfmpegTools, tmp_path: Path, src: Path, out: Path, **op: Any) -> JobContext:
    ladder = [Rung(height=240, bitrate_kbps=300), Rung(height=120, bitrate_kbps=150)]
    package = Package(ladder=ladder, segment_seconds=1.0, **op)
    return job_context(tools, tmp_path, [src.parent], src, out, package)


RENDITIONS = [
    AudioRendition(language="eng", bitrate_kbps=128),
    AudioRendition(language="fra", bitrate_kbps=96, default=True),
    AudioRendition(stream=0, bitrate_kbps=48, layout="mono", name="English (mono)"),
]


async def _audio_line(ffmpeg: str, playlist: Path) -> str:
    _, banner = await ffmpeg_output(ffmpeg, "-i", str(playlist))
    lines = re.findall(r"Stream #.*: Audio: .*", banner)
    return "\n".join(lines)


async def test_hls_rungs_share_named_alternate_audio_tracks(
    ffmpeg_tools: FfmpegTools, two_tongues: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    ctx = _ctx(ffmpeg_tools, tmp_path, two_tongues, out, audio_renditions=RENDITIONS)
    result = await run_package(ctx)
    master = (out / "master.m3u8").read_text()
    audio = [line for line in master.splitlines() if line.startswith("#EXT-X-MEDIA:TYPE=AUDIO")]
    got = [dict(re.findall(r'([A-Z-]+)="?([^",]*)"?', line)) for line in audio]
    assert [(g["NAME"], g["LANGUAGE"], g["DEFAULT"], g["URI"]) for g in got] == [
        ("English", "en", "NO", "stream_2/index.m3u8"),
        ("Français", "fr", "YES", "stream_3/index.m3u8"),
        ("English (mono)", "en", "NO", "stream_4/index.m3u8"),
    ]
    variants = [line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF:")]
    assert len(variants) == 2
    assert all('AUDIO="group_aud"' in v and 'SUBTITLES="subs"' in v for v in variants)
    # The rungs carry no audio of their own; each alternate track is the input track asked for.
    assert await _audio_line(ffmpeg_tools.ffmpeg, out / "stream_0" / "index.m3u8") == ""
    english = await _audio_line(ffmpeg_tools.ffmpeg, out / "stream_2" / "index.m3u8")
    french = await _audio_line(ffmpeg_tools.ffmpeg, out / "stream_3" / "index.m3u8")
    mono = await _audio_line(ffmpeg_tools.ffmpeg, out / "stream_4" / "index.m3u8")
    assert "aac" in english and "48000 Hz" in english and "stereo" in english
    assert "44100 Hz" in french and "mono" in french
    assert "48000 Hz" in mono and "mono" in mono
    assert result.audio_renditions == [
        AudioRenditionReport(name="English", track=0, language="eng", bitrate_kbps=128),
        AudioRenditionReport(name="Français", track=1, language="fra", bitrate_kbps=96,
                             default=True),
        AudioRenditionReport(name="English (mono)", track=0, language="eng", bitrate_kbps=48,
                             channels=1),
    ]  # fmt: skip
    # The whole package plays: ffmpeg opens the master with every group.
    _, err = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(out / "master.m3u8"))
    assert err.count("Audio: aac") >= 3 and "Subtitle: webvtt" in err


async def test_without_a_default_the_first_track_is_the_default(
    ffmpeg_tools: FfmpegTools, two_tongues: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    renditions = [AudioRendition(language="fra"), AudioRendition(language="eng")]
    ctx = _ctx(ffmpeg_tools, tmp_path, two_tongues, out, audio_renditions=renditions,
               subtitles="drop")  # fmt: skip
    result = await run_package(ctx)
    master = (out / "master.m3u8").read_text()
    assert re.findall(r'NAME="([^"]+)",DEFAULT=(YES|NO)', master) == [
        ("Français", "YES"),
        ("English", "NO"),
    ]
    assert [a.default for a in result.audio_renditions] == [True, False]


async def test_dash_gives_each_input_track_its_adaptation_set(
    ffmpeg_tools: FfmpegTools, two_tongues: Path, tmp_path: Path
) -> None:
    out = tmp_path / "dash"
    ctx = _ctx(ffmpeg_tools, tmp_path, two_tongues, out, hls=False, dash=True,
               audio_renditions=RENDITIONS)  # fmt: skip
    result = await run_package(ctx)
    mpd = (out / "manifest.mpd").read_text()
    sets = re.findall(r"<AdaptationSet[^>]*>", mpd)
    sets = [s for s in sets if 'contentType="text"' not in s]  # the English subtitles' own
    assert len(sets) == 3  # the video; English at two bitrates; French
    audio_sets = [s for s in sets if 'contentType="audio"' in s]
    assert [re.search(r'lang="(\w+)"', s)[1] for s in audio_sets] == ["eng", "fra"]  # type: ignore[index]
    assert mpd.count('mimeType="audio/mp4"') == 3 and len(result.audio_renditions) == 3


@pytest.mark.parametrize(
    ("renditions", "message"),
    [
        (
            [AudioRendition(language="deu")],
            "no audio track in language 'deu'; the input has eng, fra",
        ),
        ([AudioRendition(stream=2)], "the input has 2 audio track\\(s\\), not a track 2"),
    ],
)
async def test_a_track_the_input_lacks_is_refused_naming_what_it_has(
    ffmpeg_tools: FfmpegTools, two_tongues: Path, tmp_path: Path,
    renditions: list[AudioRendition], message: str,
) -> None:  # fmt: skip
    out = tmp_path / "pkg"
    with pytest.raises(InputError, match=message):
        await run_package(_ctx(ffmpeg_tools, tmp_path, two_tongues, out,
                               audio_renditions=renditions))  # fmt: skip
    assert not out.exists()


async def test_an_input_without_audio_is_refused(
    ffmpeg_tools: FfmpegTools, media_dir: Path, tmp_path: Path
) -> None:
    silent = tmp_path / "silent.mp4"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y", "-f", "lavfi",
        "-i", "testsrc2=size=320x240:rate=25:duration=1", "-c:v", "libx264",
        "-preset", "ultrafast", str(silent),
    )  # fmt: skip
    assert code == 0, err
    ctx = _ctx(ffmpeg_tools, tmp_path, silent, tmp_path / "pkg",
               audio_renditions=[AudioRendition()])  # fmt: skip
    with pytest.raises(InputError, match="the input has no audio track"):
        await run_package(ctx)


@pytest.mark.parametrize(
    ("renditions", "message"),
    [
        ([{"language": "eng", "stream": 0}], "by `language` or by `stream`, not both"),
        (
            [{"language": "eng"}, {"language": "eng", "bitrate_kbps": 64}],
            "distinct names \\(set `name`\\): eng appears more than once",
        ),
        ([{"default": True}, {"stream": 1, "default": True}], "at most one audio rendition"),
        ([{"name": 'say "hi"'}], "Expected `str` matching regex"),
        ([{}] * 9, "Expected `array` of length <= 8"),
    ],
)
def test_the_schema_refuses_renditions_players_could_not_tell_apart(
    renditions: list[dict[str, Any]], message: str
) -> None:
    doc = {"op": "package", "ladder": [{"height": 240, "bitrate_kbps": 300}],
           "audio_renditions": renditions}  # fmt: skip
    with pytest.raises((msgspec.ValidationError, ValueError), match=message):
        msgspec.convert(doc, Package)
