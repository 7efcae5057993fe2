"""Subtitle tracks through a transcode on real ffmpeg: kept as the container's text format with
their languages, dropped on request, burned into the picture with libass, refused clearly."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio

from daemon.errors import InputError, InvalidJob
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.probe import probe_media
from daemon.probe.ffmpeg_caps import probe_ffmpeg
from tests.support.media import run_ffmpeg
from tests.support.probing import ffmpeg_output, mean_rgb
from tests.support.transcodejob import run_job

CUES = {
    "eng": [("00:00:00,200", "00:00:00,900", "Hello there"),
            ("00:00:01,100", "00:00:01,800", "Second cue")],
    "fra": [("00:00:00,200", "00:00:00,900", "Bonjour"),
            ("00:00:01,100", "00:00:01,800", "Deuxième")],
}  # fmt: skip


def srt(cues: list[tuple[str, str, str]]) -> str:
    return "".join(f"{n}\n{a} --> {b}\n{text}\n\n" for n, (a, b, text) in enumerate(cues, 1))


@pytest_asyncio.fixture(scope="module")
async def subbed(ffmpeg_tools: FfmpegTools, media_dir: Path) -> Path:
    """2 s of black 320x240 video, a tone, and two SubRip tracks (eng, then fra) in mkv; the
    folder's name has characters a filter graph must escape."""
    folder = media_dir / "odd, [name]; it's"
    folder.mkdir(exist_ok=True)
    for lang, cues in CUES.items():
        (folder / f"{lang}.srt").write_text(srt(cues))
    out = folder / "subbed.mkv"
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", "color=c=black:size=320x240:rate=25:duration=2",
        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=2",
        "-i", str(folder / "eng.srt"), "-i", str(folder / "fra.srt"),
        "-map", "0:v", "-map", "1:a", "-map", "2", "-map", "3",
        "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-c:s", "srt",
        "-metadata:s:s:0", "language=eng", "-metadata:s:s:1", "language=fra", str(out),
    )  # fmt: skip
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def roots(subbed: Path) -> list[Path]:
    return [subbed.parent]


async def cue_text(ffmpeg: str, path: Path, track: int) -> str:
    """The subtitle track's cues as SubRip text."""
    out, err = await ffmpeg_output(ffmpeg, "-i", str(path), "-map", f"0:s:{track}",
                                   "-f", "srt", "-")  # fmt: skip
    assert out, err
    return out.decode()


@pytest.mark.parametrize(
    ("name", "codec", "subtitle_codec"),
    [("out.mp4", None, "mov_text"), ("out.mov", None, "mov_text"), ("out.mkv", None, "subrip"),
     ("out.webm", "vp9", "webvtt")],
)  # fmt: skip
async def test_text_tracks_are_kept_as_the_containers_text(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path,
    name: str, codec: str | None, subtitle_codec: str,
) -> None:  # fmt: skip
    out = tmp_path / "out" / name
    extra = {"codec": codec} if codec else {}
    result = await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, **extra)
    subs = [s for s in (await probe_media(ffmpeg_tools, out)).streams if s.type == "subtitle"]
    assert [(s.codec, s.language) for s in subs] == [(subtitle_codec, "eng"),
                                                      (subtitle_codec, "fra")]  # fmt: skip
    english = await cue_text(ffmpeg_tools.ffmpeg, out, 0)
    assert "Hello there" in english and "Second cue" in english
    assert "Deuxième" in await cue_text(ffmpeg_tools.ffmpeg, out, 1)
    assert result.notes == []


async def test_drop_leaves_them_out_and_audio_only_notes_them(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    dropped = tmp_path / "out" / "dropped.mp4"
    result = await run_job(ffmpeg_tools, tmp_path, roots, subbed, dropped, subtitles="drop")
    types = [s.type for s in (await probe_media(ffmpeg_tools, dropped)).streams]
    assert types == ["video", "audio"] and result.notes == []
    audio = tmp_path / "out" / "audio.m4a"
    result = await run_job(ffmpeg_tools, tmp_path, roots, subbed, audio)
    assert [s.type for s in (await probe_media(ffmpeg_tools, audio)).streams] == ["audio"]
    assert result.notes == ["2 subtitle track(s) left out: m4a holds audio only"]


async def test_a_trimmed_output_leaves_them_out_and_says_so(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "trimmed.mp4"
    result = await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, start_seconds=1.0)
    info = await probe_media(ffmpeg_tools, out)
    assert [s.type for s in info.streams] == ["video", "audio"]
    assert result.notes == ["2 subtitle track(s) left out: a trimmed output (`start_seconds`) "
                            "does not keep them (burning one in works)"]  # fmt: skip
    out = tmp_path / "out" / "cut.mkv"  # an end cut alone keeps them, and the cues before it
    await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, duration_seconds=1.0)
    text = await cue_text(ffmpeg_tools.ffmpeg, out, 0)
    assert "Hello there" in text and "Second cue" not in text


async def _build_filters(ffmpeg_tools: FfmpegTools) -> frozenset[str]:
    filters = frozenset((await probe_ffmpeg(ffmpeg_tools.ffmpeg)).filters)
    if "subtitles" not in filters:
        pytest.skip("this ffmpeg build has no libass `subtitles` filter")
    return filters


async def bottom_brightness(ffmpeg: str, path: Path, at: float) -> float:
    """Mean red of the strip near the bottom where libass draws a short cue (white text)."""
    return (await mean_rgb(ffmpeg, path, "160:24:80:212", at=at))[0]


@pytest.mark.parametrize(
    ("burn", "start", "lit", "dark", "kept"),
    # Trimmed: the cue at 1.1 s of the source is at 0.1 s of the output.
    [(0, None, 0.5, 1.0, ["fra"]), ("fra", 1.0, 0.4, 0.0, [])],
)
async def test_burn_in_draws_the_cues_and_keeps_the_other_track(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path,
    burn: int | str, start: float | None, lit: float, dark: float, kept: list[str],
) -> None:  # fmt: skip
    filters = await _build_filters(ffmpeg_tools)
    out = tmp_path / "out" / "burned.mp4"
    trim = {"start_seconds": start} if start else {}
    await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, filters=filters,
                  burn_subtitles=burn, **trim)  # fmt: skip
    # Black video: text drawn during a cue lights the bottom; between cues it stays black.
    assert await bottom_brightness(ffmpeg_tools.ffmpeg, out, lit) > 4
    assert await bottom_brightness(ffmpeg_tools.ffmpeg, out, dark) < 1
    subs = [s for s in (await probe_media(ffmpeg_tools, out)).streams if s.type == "subtitle"]
    assert [s.language for s in subs] == kept


async def test_burn_in_refusals_name_the_problem(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    filters = await _build_filters(ffmpeg_tools)
    out = tmp_path / "out" / "x.mp4"
    with pytest.raises(InputError, match="no subtitle track #2 \\(2 found\\)"):
        await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, filters=filters,
                      burn_subtitles=2)  # fmt: skip
    with pytest.raises(InputError, match="no subtitle track tagged 'deu' \\(its tracks: eng, fra"):
        await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, filters=filters,
                      burn_subtitles="deu")  # fmt: skip
    # A build without libass: the node says it cannot, rather than writing unburned video.
    with pytest.raises(InvalidJob, match="no `subtitles` filter \\(libass\\)"):
        await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, burn_subtitles=0)
    assert not out.exists()
