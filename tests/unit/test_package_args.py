"""A package's ffmpeg arguments: alternate audio tracks and the master playlist's labels, and an HDR
source tone-mapped once before the split."""

from __future__ import annotations

from pathlib import Path

import pytest

from control.cli.format import result_rows
from control.cli.jobflags import flag_document, submit_argv, to_spec
from control.cli.main import build_parser
from control.errors import BadInput
from daemon.ops.ladder_args import AltAudio, LadderHw, ladder_graph, package_args, with_audio_names
from daemon.ops.videograph import TONEMAP
from schemas.audioopts import AudioRendition
from schemas.operations import Package, Rung
from schemas.results import AudioRenditionReport, JobResult

LADDER = [Rung(height=720, bitrate_kbps=2800), Rung(height=360, bitrate_kbps=700)]
ALT = (
    AltAudio(track=0, kbps=128, channels=None, language="eng", name="English", default=True),
    AltAudio(track=1, kbps=96, channels=None, language="fra", name="Français", default=False),
    AltAudio(track=0, kbps=48, channels=1, language="eng", name="English mono", default=False),
)


def _args(op: Package, hw: LadderHw | None = None) -> list[str]:
    return package_args(op, LADDER, Path("/i.mp4"), Path("/out"), 100, True, 2,
                        size=(1280, 720), hw=hw, alt_audio=ALT)  # fmt: skip


def _after(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


def test_hls_maps_each_track_once_into_one_group_every_rung_names() -> None:
    args = _args(Package(ladder=LADDER))
    maps = [args[i + 1] for i, a in enumerate(args) if a == "-map"]
    assert maps == ["[v0]", "[v1]", "0:a:0", "0:a:1", "0:a:0"]
    assert _after(args, "-var_stream_map") == (
        "v:0,agroup:aud v:1,agroup:aud a:0,agroup:aud,language:eng,default:yes "
        "a:1,agroup:aud,language:fra a:2,agroup:aud,language:eng"
    )
    assert [_after(args, f"-b:a:{k}") for k in range(3)] == ["128k", "96k", "48k"]
    assert _after(args, "-ac:a:2") == "1" and "-ac:a:0" not in args
    assert _after(args, "-metadata:s:a:1") == "language=fra"


def test_an_nvenc_ladder_takes_the_same_audio() -> None:
    args = _args(Package(ladder=LADDER), LadderHw(gpu=0, cuda_frames=True))
    assert _after(args, "-c:v:0") == "h264_nvenc" and _after(args, "-c:a:1") == "aac"
    assert "a:1,agroup:aud,language:fra" in _after(args, "-var_stream_map")


def test_dash_makes_an_adaptation_set_per_input_track() -> None:
    args = _args(Package(ladder=LADDER, hls=False, dash=True))
    # Outputs 2 and 4 are the English track at two bitrates: one set, switchable; 3 is French.
    assert _after(args, "-adaptation_sets") == "id=0,streams=v id=1,streams=2,4 id=2,streams=3"
    assert "-var_stream_map" not in args


MASTER = """#EXTM3U
#EXT-X-VERSION:7
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="group_aud",NAME="audio_2",DEFAULT=YES,LANGUAGE="eng",URI="stream_2/index.m3u8"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="group_aud",NAME="audio_3",DEFAULT=NO,LANGUAGE="fra",URI="stream_3/index.m3u8"
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="group_aud",NAME="audio_4",DEFAULT=NO,URI="stream_4/index.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=251407,RESOLUTION=1280x720,AUDIO="group_aud"
stream_0/index.m3u8
"""


def test_the_master_gets_each_tracks_label_and_a_bcp47_language() -> None:
    fixed = with_audio_names(MASTER, 2, ALT).splitlines()
    assert 'NAME="English",DEFAULT=YES,LANGUAGE="en",URI="stream_2' in fixed[2]
    assert 'NAME="Français",DEFAULT=NO,LANGUAGE="fr",URI="stream_3' in fixed[3]
    # A line the muxer wrote without LANGUAGE keeps none; the variant lines are untouched.
    assert fixed[4].endswith('NAME="English mono",DEFAULT=NO,URI="stream_4/index.m3u8"')
    assert fixed[5:] == MASTER.splitlines()[5:]


def _package(*flags: str) -> Package:
    argv = submit_argv(["submit", "package", "in.mkv", "pkg", *flags])
    args = build_parser().parse_args(argv)
    op = to_spec(flag_document(args), args, "from flags").operation
    assert isinstance(op, Package)
    return op


def test_cli_audio_renditions_reach_the_schema() -> None:
    op = _package("--audio-rendition", "eng", "--audio-rendition", "fra:96",
                  "--audio-rendition", "0:48:mono:English (mono)")  # fmt: skip
    assert op.audio_renditions == [
        AudioRendition(language="eng"),
        AudioRendition(language="fra", bitrate_kbps=96),
        AudioRendition(stream=0, bitrate_kbps=48, layout="mono", name="English (mono)"),
    ]
    assert _package().audio_renditions == []
    assert _package("--hdr", "tonemap").hdr == "tonemap" and _package().hdr == "auto"
    with pytest.raises(BadInput, match="write TRACK\\[:KBPS"):
        _package("--audio-rendition", "eng:loud")
    with pytest.raises(BadInput, match="audio_renditions"):
        _package("--audio-rendition", "English")  # not an ISO 639-2 code


def test_status_lists_each_audio_track() -> None:
    report = AudioRenditionReport(name="English (mono)", track=0, language="eng",
                                  bitrate_kbps=48, channels=1, default=True)  # fmt: skip
    rows = result_rows(JobResult(audio_renditions=[report]))
    assert rows == [("audio", "English (mono) (track 0, eng, 48 kb/s, 1 ch, default)")]


def test_tonemap_runs_once_before_the_split_and_tags_every_rung() -> None:
    graph = ladder_graph(LADDER, 1920, 1080, None, tonemap=True)
    assert graph.startswith(f"[0:v:0]{TONEMAP},split=2[s0][s1];")
    tags = "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709"
    assert graph.count(tags) == 2 and graph.count("tonemap=hable") == 1
    assert "setparams" not in ladder_graph(LADDER, 1920, 1080, None)


def test_tonemap_never_asks_for_frames_kept_on_the_gpu() -> None:
    nvenc = LadderHw(gpu=0, cuda_frames=False)
    args = package_args(Package(ladder=LADDER, hdr="tonemap"), LADDER, Path("/i.mp4"),
                        Path("/out"), 100, True, 2, hw=nvenc, tonemap=True)  # fmt: skip
    assert "-hwaccel" not in args and _after(args, "-c:v:0") == "h264_nvenc"
    with pytest.raises(ValueError, match="tone-mapping runs on the CPU"):
        package_args(Package(ladder=LADDER), LADDER, Path("/i.mp4"), Path("/out"), 100, True,
                     2, hw=LadderHw(gpu=0, cuda_frames=True), tonemap=True)  # fmt: skip
