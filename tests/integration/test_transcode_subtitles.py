"""Subtitle tracks on real ffmpeg: kept by a transcode as the container's text format with their
languages, dropped on request, burned into the picture with libass, refused clearly; WebVTT
renditions of an HLS package."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import pytest_asyncio

from daemon.errors import InputError, InvalidJob
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.probe import probe_media
from daemon.ops.context import JobContext
from daemon.ops.package import run_package
from daemon.probe.ffmpeg_caps import BURN_IN, probe_ffmpeg, verify_burn_in
from schemas.codec import encode
from schemas.jobs import JobSpec
from schemas.operations import Package, Rung, Transcode
from tests.support.media import run_ffmpeg
from tests.support.probing import ffmpeg_output, mean_rgb
from tests.support.release import extract_release
from tests.support.transcodejob import job_context, run_job

CUES = {
    "eng": [("00:00:00,200", "00:00:00,900", "Hello there"),
            ("00:00:01,100", "00:00:01,800", "Second cue")],
    "fra": [("00:00:00,200", "00:00:00,900", "Bonjour"),
            ("00:00:01,300", "00:00:01,800", "Deuxième")],
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


async def test_styled_text_into_mkv_is_copied_with_the_attached_fonts(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    styled = tmp_path / "styled.mkv"  # an ASS track and a font attachment (any bytes will do)
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y", "-i", str(subbed), "-map", "0:v",
        "-map", "0:s:0", "-c:v", "copy", "-c:s", "ass", "-attach", str(subbed.parent / "eng.srt"),
        "-metadata:s:t", "mimetype=application/x-truetype-font", str(styled),
    )  # fmt: skip
    assert code == 0, err
    out = tmp_path / "out" / "styled.mkv"
    await run_job(ffmpeg_tools, tmp_path, roots, styled, out)
    streams = (await probe_media(ffmpeg_tools, out)).streams
    assert [(s.type, s.codec) for s in streams if s.type != "video"] == [
        ("subtitle", "ass"),
        ("attachment", "ttf"),
    ]


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


@pytest.mark.parametrize("name", ["trimmed.mp4", "trimmed.mkv"])
async def test_a_trimmed_output_keeps_the_later_cues_on_its_own_clock(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path, name: str
) -> None:
    out = tmp_path / "out" / name
    result = await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, start_seconds=1.0)
    info = await probe_media(ffmpeg_tools, out)
    subs = [s.language for s in info.streams if s.type == "subtitle"]
    assert subs == ["eng", "fra"] and result.notes == []
    # The cue at 1.1 s of the source starts 0.1 s into the output; the one before the cut is gone.
    text = await cue_text(ffmpeg_tools.ffmpeg, out, 0)
    assert "00:00:00,100 --> 00:00:00,800\nSecond cue" in text and "Hello there" not in text
    _, err = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(out))
    assert "start: 0.000000" in err  # the picture still starts the output
    late = tmp_path / "out" / "late.mp4"
    result = await run_job(ffmpeg_tools, tmp_path, roots, subbed, late, start_seconds=1.5)
    assert [s.type for s in (await probe_media(ffmpeg_tools, late)).streams] == ["video", "audio"]
    assert result.notes == [
        "subtitle stream #2 (eng) left out: no cue starts after `start_seconds`",
        "subtitle stream #3 (fra) left out: no cue starts after `start_seconds`",
    ]


async def test_an_end_cut_keeps_the_cues_before_it(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "out" / "cut.mkv"
    await run_job(ffmpeg_tools, tmp_path, roots, subbed, out, duration_seconds=1.0)
    text = await cue_text(ffmpeg_tools.ffmpeg, out, 0)
    assert "Hello there" in text and "Second cue" not in text


async def _build_filters(ffmpeg_tools: FfmpegTools) -> frozenset[str]:
    """The filters this node would report as verified (the probe's test render)."""
    listed = (await probe_ffmpeg(ffmpeg_tools.ffmpeg)).filters
    why = await verify_burn_in(ffmpeg_tools.ffmpeg, listed)
    # The bundled build has libass: a machine where it draws nothing must say so, not skip.
    assert why is None, f"burn-in does not work on this machine: {why}"
    return frozenset({BURN_IN})


async def test_the_probe_claims_burn_in_only_where_a_cue_was_drawn(
    ffmpeg_tools: FfmpegTools,
) -> None:
    listed = (await probe_ffmpeg(ffmpeg_tools.ffmpeg)).filters
    assert await verify_burn_in(ffmpeg_tools.ffmpeg, [f for f in listed if f != BURN_IN]) == (
        "ffmpeg has no `subtitles` filter (built without libass)"
    )
    why = await verify_burn_in("/bin/false", [BURN_IN])
    assert why is not None and why.startswith("the `subtitles` test render failed")


async def bottom_brightness(ffmpeg: str, path: Path, at: float) -> float:
    """Mean red of the strip near the bottom where libass draws a short cue (white text)."""
    return (await mean_rgb(ffmpeg, path, "160:24:80:212", at=at))[0]


@pytest.mark.parametrize(
    ("burn", "start", "lit", "dark", "kept"),
    # Trimmed: 0.5 s into the output is 1.5 s of the source, inside French's second cue; at
    # 0.2 s (1.2 s) only the English track has one, so it stays dark if French is the one drawn.
    [(0, None, 0.5, 1.0, ["fra"]), ("fra", 1.0, 0.5, 0.2, ["eng"])],
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


def _package_ctx(tools: FfmpegTools, tmp_path: Path, roots: list[Path], src: Path,
                 out: Path, **op: Any) -> JobContext:  # fmt: skip
    package = Package(ladder=[Rung(height=240, bitrate_kbps=300), Rung(height=120,
                      bitrate_kbps=150)], segment_seconds=1.0, **op)  # fmt: skip
    return job_context(tools, tmp_path, roots, src, out, package)


async def test_hls_package_carries_each_text_track_as_a_webvtt_rendition(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "pkg"
    result = await run_package(_package_ctx(ffmpeg_tools, tmp_path, roots, subbed, out))
    master = (out / "master.m3u8").read_text()
    media = [line for line in master.splitlines() if line.startswith("#EXT-X-MEDIA:")]
    assert media == [
        '#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="English",LANGUAGE="en",DEFAULT=NO,'
        'AUTOSELECT=YES,URI="subs_0.m3u8"',
        '#EXT-X-MEDIA:TYPE=SUBTITLES,GROUP-ID="subs",NAME="Français",LANGUAGE="fr",DEFAULT=NO,'
        'AUTOSELECT=YES,URI="subs_1.m3u8"',
    ]
    variants = [line for line in master.splitlines() if line.startswith("#EXT-X-STREAM-INF:")]
    assert len(variants) == 2 and all(v.endswith(',SUBTITLES="subs"') for v in variants)
    english, french = ((out / f"subs_{k}.vtt").read_text() for k in (0, 1))
    assert "00:00.200 --> 00:00.900\nHello there" in english
    # Cue time 0 is the first picture, which x264's reordering delay puts a little after 0.
    [ticks] = re.findall(r"^WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:(\d+),LOCAL:00:00:00.000\n", english)
    _, banner = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(out / "stream_0" /
                                    "index.m3u8"))  # fmt: skip
    [start] = re.findall(r": Video: .*, start ([\d.]+)", banner)
    assert int(ticks) == round(float(start) * 90000) and 0 <= float(start) < 0.3
    assert "00:01.100 --> 00:01.800\nSecond cue" in english and "Deuxième" in french
    playlist = (out / "subs_0.m3u8").read_text()
    [extinf] = re.findall(r"#EXTINF:([\d.]+),\nsubs_0.vtt\n#EXT-X-ENDLIST", playlist)
    assert abs(float(extinf) - 2.0) < 0.1
    # The renditions' playlists are reported with the others; ffmpeg reads the package whole.
    assert {"subs_0.m3u8", "subs_1.m3u8"} <= {f.uri.rsplit("/", 1)[-1] for f in result.outputs}
    assert result.notes == []
    _, err = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(out / "master.m3u8"))
    assert "Subtitle: webvtt" in err


async def test_ts_segments_get_webvtt_placed_on_their_clock(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "ts"
    ctx = _package_ctx(ffmpeg_tools, tmp_path, roots, subbed, out, hls_segment_type="mpegts")
    result = await run_package(ctx)
    assert result.notes == [] and 'SUBTITLES="subs"' in (out / "master.m3u8").read_text()
    vtt = (out / "subs_0.vtt").read_text()
    [ticks] = re.findall(r"^X-TIMESTAMP-MAP=MPEGTS:(\d+),LOCAL:00:00:00.000$", vtt, re.M)
    # The mpegts muxer starts the picture 1.4 s in, plus the encoder's reordering delay.
    _, banner = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-i", str(out / "stream_0" /
                                    "seg_00000.ts"))  # fmt: skip
    [start] = re.findall(r": Video: .*, start ([\d.]+)", banner)
    assert int(ticks) == round(float(start) * 90000) and 1.4 <= float(start) < 1.7
    assert vtt.startswith("WEBVTT\nX-TIMESTAMP-MAP=") and "Hello there" in vtt


async def test_a_dash_manifest_carries_each_text_track_as_a_webvtt_adaptation_set(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "dash"
    result = await run_package(_package_ctx(ffmpeg_tools, tmp_path, roots, subbed, out,
                                            dash=True))  # fmt: skip
    ns = {"d": "urn:mpeg:dash:schema:mpd:2011"}
    period = ElementTree.parse(out / "manifest.mpd").getroot().find("d:Period", ns)
    assert period is not None
    texts = [a for a in period.findall("d:AdaptationSet", ns) if a.get("contentType") == "text"]
    assert [(a.get("mimeType"), a.get("lang")) for a in texts] == [("text/vtt", "en"),
                                                                    ("text/vtt", "fr")]  # fmt: skip
    urls = [a.findtext("d:Representation/d:BaseURL", namespaces=ns) for a in texts]
    assert urls == ["subs_0.vtt", "subs_1.vtt"]
    assert "Hello there" in (out / "subs_0.vtt").read_text()
    assert "Bonjour" in (out / "subs_1.vtt").read_text()
    # The dash muxer's own HLS playlists get none, and the result says so.
    assert result.notes == ["the HLS playlists written beside DASH carry no subtitles (the "
                            "manifest does; an HLS-only package's playlists do)"]  # fmt: skip
    assert "SUBTITLES" not in (out / "master.m3u8").read_text()
    # ffmpeg's DASH reader opens .vtt representations only when told to (players do anyway).
    _, err = await ffmpeg_output(ffmpeg_tools.ffmpeg, "-allowed_extensions", "ALL", "-i",
                                 str(out / "manifest.mpd"))  # fmt: skip
    assert re.findall(r"\((\w+)\): Subtitle: webvtt, start 0\.2", err) == ["en", "fr"], err


async def test_a_package_dropping_subtitles_writes_none(
    ffmpeg_tools: FfmpegTools, subbed: Path, roots: list[Path], tmp_path: Path
) -> None:
    out = tmp_path / "dropped"
    result = await run_package(_package_ctx(ffmpeg_tools, tmp_path, roots, subbed, out,
                                            subtitles="drop"))  # fmt: skip
    assert result.notes == [] and not list(out.glob("*.vtt"))


async def test_jobs_that_leave_the_new_fields_at_their_defaults_decode_on_the_previous_release(
    tmp_path: Path,
) -> None:
    """Rolling upgrade: `subtitles`, `burn_subtitles` and Package's defaults stay off the wire."""
    tree = await extract_release(tmp_path / "previous")
    jobs = [
        JobSpec(job_id="t", input="file:///in/a.mkv", output="file:///o/a.mp4",
                operation=Transcode()),
        JobSpec(job_id="p", input="file:///in/a.mkv", output="file:///o/pkg",
                operation=Package(ladder=[Rung(height=240, bitrate_kbps=300)])),
    ]  # fmt: skip
    script = (
        "import sys\nfrom schemas.registry import JOB_DECODER\n"
        "for line in sys.stdin.read().splitlines():\n"
        "    print(JOB_DECODER.decode(line.encode()).operation.__class__.__name__)\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    lines = b"\n".join(encode(job) for job in jobs)
    out, err = await asyncio.wait_for(proc.communicate(lines), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    assert out.decode().split() == ["Transcode", "Package"]
