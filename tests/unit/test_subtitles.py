"""Subtitle choices without ffmpeg: what each container keeps of which track, the argv they
become, the refusals at decode time, and routing a burn-in job to a node with libass."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from control.api.fleetfit import why_not
from control.cli.jobflags import flag_document, submit_argv, to_spec
from control.cli.main import build_parser
from control.errors import BadInput
from control.nodes import FleetNode
from daemon.errors import InputError
from daemon.job.requirements import NodeView, unmet_requirement
from daemon.ops.subtitles import (
    Subtitles,
    SubTrack,
    burn_filter,
    cut_args,
    first_segment,
    plan_subtitles,
    subtitle_args,
    subtitle_inputs,
    video_start,
    with_dash_subtitles,
    with_subtitles,
    with_timestamp_map,
)
from schemas.codec import DecodeError
from schemas.jobs import JobSpec
from schemas.operations import Package, Transcode
from schemas.registry import JOB_DECODER
from schemas.results import ProbeInfo, StreamInfo
from tests.support.noderecords import node_record

INFO = ProbeInfo(
    container="matroska,webm",
    duration_s=10.0,
    streams=[
        StreamInfo(index=0, type="video", codec="h264"),
        StreamInfo(index=1, type="audio", codec="aac"),
        StreamInfo(index=2, type="subtitle", codec="ass", language="eng"),
        StreamInfo(index=3, type="subtitle", codec="hdmv_pgs_subtitle", language="deu"),
        StreamInfo(index=4, type="subtitle", codec="subrip", language="fra"),
        StreamInfo(index=5, type="subtitle", codec="eia_608"),
    ],
)


def job(output: str, **op: Any) -> JobSpec:
    doc = {"job_id": "j", "input": "file:///in/i.mkv", "output": output,
           "operation": {"op": "transcode", **op}}  # fmt: skip
    return JOB_DECODER.decode(json.dumps(doc).encode())


def transcode(output: str, **op: Any) -> Transcode:
    spec = job(output, **op)
    assert isinstance(spec.operation, Transcode)
    return spec.operation


def kept(subs: Subtitles) -> list[tuple[int, str]]:
    return [(t.index, t.encoder) for t in subs.keep]


def test_each_container_keeps_what_it_can_carry() -> None:
    mp4 = plan_subtitles(transcode("file:///o/x.mp4"), INFO)
    assert mp4.keep == (SubTrack(2, "mov_text", "ass", "eng"), SubTrack(4, "mov_text", "subrip",
                                                                         "fra"))  # fmt: skip
    assert mp4.notes == (
        "subtitle track #1 (hdmv_pgs_subtitle, deu) left out: picture subtitles cannot become "
        "mp4 text (an mkv output keeps them)",
        "subtitle track #3 (eia_608) left out: not a subtitle format this node converts",
    )
    mkv = plan_subtitles(transcode("file:///o/x.mkv"), INFO)
    assert kept(mkv) == [(2, "copy"), (3, "copy"), (4, "copy")]
    webm = plan_subtitles(transcode("file:///o/x.webm", codec="vp9"), INFO)
    assert [t.encoder for t in webm.keep] == ["webvtt", "webvtt"]
    assert subtitle_args(webm, 1) == ["-map", "0:2", "-c:s:0", "webvtt",
                                      "-map", "0:4", "-c:s:1", "webvtt"]  # fmt: skip
    assert plan_subtitles(transcode("file:///o/x.mp4", subtitles="drop"), INFO).keep == ()


def test_a_trimmed_output_reads_its_tracks_cut_from_scratch() -> None:
    op = transcode("file:///o/x.mkv", start_seconds=3)
    subs = plan_subtitles(op, INFO)
    assert kept(subs) == [(2, "copy"), (4, "copy")]  # the picture track is not cut
    assert subs.notes[0] == (
        "subtitle track #1 (hdmv_pgs_subtitle, deu) left out: picture subtitles are not cut "
        "for a trimmed output (`start_seconds`)"
    )
    args, cut = cut_args(Path("/in/i.mkv"), subs, Path("/s"), 3.0, ("-protocol_whitelist", "file"))
    assert args == [
        "-protocol_whitelist", "file", "-i", "file:/in/i.mkv",
        "-map", "0:2", "-ss", "3.000000", "-c:s", "ass", "-f", "ass", "file:/s/subtitles-0.ass",
        "-map", "0:4", "-ss", "3.000000", "-c:s", "srt", "-f", "srt", "file:/s/subtitles-1.srt",
    ]  # fmt: skip
    assert kept(cut) == [(2, "ass"), (4, "srt")]
    assert subtitle_inputs(cut, 3.0)[:7] == ["-itsoffset", "-3.000000", "-protocol_whitelist",
                                             "file", "-f", "ass", "-i"]  # fmt: skip
    assert subtitle_args(cut, 2) == ["-map", "2:0", "-c:s:0", "ass", "-metadata:s:s:0",
                                     "language=eng", "-map", "3:0", "-c:s:1", "srt",
                                     "-metadata:s:s:1", "language=fra"]  # fmt: skip


def test_an_mkv_keeping_styled_text_takes_the_fonts_attached_to_the_input() -> None:
    font = StreamInfo(index=6, type="attachment", codec="ttf")
    with_font = msgspec.structs.replace(INFO, streams=[*INFO.streams, font])
    mkv = plan_subtitles(transcode("file:///o/x.mkv"), with_font)
    assert mkv.fonts and subtitle_args(mkv, 1)[-2:] == ["-map", "0:t"]
    assert not plan_subtitles(transcode("file:///o/x.mkv"), INFO).fonts  # none attached
    assert not plan_subtitles(transcode("file:///o/x.mp4"), with_font).fonts  # no ASS in mp4


def test_the_burned_track_is_not_kept_too() -> None:
    by_language = plan_subtitles(transcode("file:///o/x.mp4", burn_subtitles="fra"), INFO)
    assert by_language.burn == 2 and kept(by_language) == [(2, "mov_text")]
    assert plan_subtitles(transcode("file:///o/x.mkv", burn_subtitles=0), INFO).burn == 0
    with pytest.raises(InputError, match=r"track #1 \(hdmv_pgs_subtitle, deu\) is not text"):
        plan_subtitles(transcode("file:///o/x.mp4", burn_subtitles="deu"), INFO)


def test_the_burn_filter_escapes_the_path_and_follows_a_seek() -> None:
    path = Path("/media/it's: a, [test];.mkv")
    escaped = r"/media/it\\\'s\\: a\, \[test\]\;.mkv"
    assert burn_filter(path, 1, None) == f"subtitles=filename={escaped}:si=1"
    assert burn_filter(path, 0, 2.5) == (
        f"setpts=PTS+2.500000/TB,subtitles=filename={escaped}:si=0,setpts=PTS-2.500000/TB"
    )


@pytest.mark.parametrize(
    ("output", "op", "message"),
    [
        ("file:///o/x.m4a", {"burn_subtitles": 0}, "`burn_subtitles` shape video"),
        ("file:///o/x.mp4", {"burn_subtitles": "english"}, "burn_subtitles"),
        ("file:///o/x.mp4", {"burn_subtitles": 65}, "burn_subtitles"),
        ("file:///o/x.mp4", {"subtitles": "all"}, "subtitles"),
    ],
)
def test_refusals_name_the_field(output: str, op: dict[str, Any], message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        job(output, **op)


def test_defaults_stay_off_the_wire_so_older_nodes_read_the_job() -> None:
    plain = msgspec.json.decode(msgspec.json.encode(transcode("file:///o/x.mp4")))
    assert "subtitles" not in plain and "burn_subtitles" not in plain
    burned = msgspec.json.decode(msgspec.json.encode(transcode("file:///o/x.mp4",
                                                               burn_subtitles="eng")))  # fmt: skip
    assert burned["burn_subtitles"] == "eng"


def test_a_burn_in_job_goes_only_to_a_node_whose_ffmpeg_has_libass() -> None:
    burn = job("file:///o/x.mp4", burn_subtitles=0)
    without = NodeView(pools=["cpu"], verified_encoders={"libx264", "aac"})
    reason = "burning subtitles in needs ffmpeg's subtitles filter (libass) working here"
    assert unmet_requirement(burn, without) == reason
    assert unmet_requirement(job("file:///o/x.mp4"), without) is None
    with_libass = NodeView(pools=["cpu"], verified_encoders={"libx264"}, filters={"subtitles"})
    assert unmet_requirement(burn, with_libass) is None
    record = node_record("plain", encoders=["libx264", "aac"])
    assert why_not(burn, FleetNode(record, "online")) == f"plain: {reason}"
    record.capabilities.verified_filters = ["subtitles"]
    assert why_not(burn, FleetNode(record, "online")) is None


def _flags(*argv: str) -> JobSpec:
    args = build_parser().parse_args(submit_argv(["submit", *argv]))
    return to_spec(flag_document(args), args, "from flags")


def test_cli_flags_reach_the_schema() -> None:
    op = _flags("transcode", "in.mkv", "out.mp4", "--burn-subtitles", "1").operation
    assert isinstance(op, Transcode) and (op.burn_subtitles, op.subtitles) == (1, "keep")
    op = _flags("transcode", "in.mkv", "out.mp4", "--burn-subtitles", "fra", "--subtitles",
                "drop").operation  # fmt: skip
    assert isinstance(op, Transcode) and (op.burn_subtitles, op.subtitles) == ("fra", "drop")
    package = _flags("package", "in.mkv", "pkg", "--subtitles", "drop").operation
    assert isinstance(package, Package) and package.subtitles == "drop"
    with pytest.raises(BadInput, match="burn_subtitles"):
        _flags("transcode", "in.mkv", "out.mp4", "--burn-subtitles", "French")


def test_hls_renditions_have_unique_names_and_bcp47_languages() -> None:
    tracks = [
        StreamInfo(index=2, type="subtitle", codec="subrip", language="eng"),
        StreamInfo(index=3, type="subtitle", codec="subrip", language="eng"),
        StreamInfo(index=4, type="subtitle", codec="subrip", language="tlh"),
        StreamInfo(index=5, type="subtitle", codec="subrip"),
    ]
    master = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-STREAM-INF:BANDWIDTH=1\nstream_0/index.m3u8\n"
    lines = with_subtitles(master, tracks).splitlines()
    names = [re.findall(r'NAME="([^"]+)"(?:,LANGUAGE="([^"]+)")?', line)[0] for line in lines
             if line.startswith("#EXT-X-MEDIA:")]  # fmt: skip
    assert names == [("English", "en"), ("English 2", "en"), ("tlh", "tlh"), ("Subtitles 4", "")]
    assert lines[-2] == '#EXT-X-STREAM-INF:BANDWIDTH=1,SUBTITLES="subs"'
    assert with_timestamp_map("WEBVTT\n\n00:00.200 --> 00:00.900\nHi\n", 1.48).startswith(
        "WEBVTT\nX-TIMESTAMP-MAP=MPEGTS:133200,LOCAL:00:00:00.000\n\n00:00.200"
    )


def test_a_dash_manifest_gets_a_text_adaptation_set_per_track_inside_its_period() -> None:
    mpd = '<MPD>\n\t<Period id="0">\n\t\t<AdaptationSet id="0"/>\n\t</Period>\n</MPD>\n'
    tracks = [StreamInfo(index=2, type="subtitle", codec="subrip", language="fra"),
              StreamInfo(index=3, type="subtitle", codec="subrip")]  # fmt: skip
    out = with_dash_subtitles(mpd, tracks)
    assert out.index(
        '<AdaptationSet id="100" contentType="text" mimeType="text/vtt" lang="fr">'
    ) < (out.index("\t</Period>"))
    assert '<AdaptationSet id="101" contentType="text" mimeType="text/vtt">' in out
    assert "<BaseURL>subs_1.vtt</BaseURL>" in out and out.endswith("\t</Period>\n</MPD>\n")
    with pytest.raises(ValueError, match="no Period"):
        with_dash_subtitles("<MPD/>", tracks)


def test_the_first_segment_is_read_from_the_variants_playlist() -> None:
    one_variant = ('#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:1.000000,\n'
                   "seg_00000.m4s\n#EXTINF:1.000000,\nseg_00001.m4s\n#EXT-X-ENDLIST\n")  # fmt: skip
    assert first_segment(one_variant) == ("init.mp4", "seg_00000.m4s")
    several = one_variant.replace("init.mp4", "init_0.mp4")
    assert first_segment(several) == ("init_0.mp4", "seg_00000.m4s")
    ts = "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nseg_00000.ts\n#EXT-X-ENDLIST\n"
    assert first_segment(ts) == (None, "seg_00000.ts")
    with pytest.raises(ValueError):
        first_segment("#EXTM3U\n#EXT-X-ENDLIST\n")


def test_a_video_start_of_zero_goes_unsaid() -> None:
    stream = "  Stream #0:0[0x1](und): Video: h264 (High), yuv420p, 160x90, 25 fps, 12800 tbn"
    assert video_start(f"{stream}, start 0.080000 (default)\n") == 0.08
    assert video_start(f"  Duration: 00:00:01.00, start: 1.4\n{stream} (default)\n") == 0.0
    assert video_start("  Stream #0:0: Audio: aac, 48000 Hz, start 0.02\n") is None
