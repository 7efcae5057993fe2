"""Subtitle tracks, pure: which of the input's subtitle streams an output keeps and as what (the
container decides), the `subtitles` filter that burns one into the picture, and the WebVTT
renditions of a package.

Text converts between formats (styling may be lost on the way); picture subtitles (DVD, PGS,
DVB) cannot become text, so only mkv keeps them, copied. Every track left out is named in a note.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

from daemon.errors import InputError
from daemon.media.paths import ffmpeg_arg
from schemas.operations import Transcode
from schemas.results import ProbeInfo, StreamInfo

#: Subtitle codecs ffmpeg decodes to text (which it can encode as any other text format).
TEXT_CODECS = frozenset({
    "subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text", "microdvd", "subviewer",
    "subviewer1", "sami", "realtext", "jacosub", "mpl2", "pjs", "vplayer", "stl",
})  # fmt: skip
PICTURE_CODECS = frozenset({"dvd_subtitle", "hdmv_pgs_subtitle", "dvb_subtitle", "xsub"})
#: The encoder each container's text subtitles are written with; absent: it holds none.
TEXT_ENCODER = {"mp4": "mov_text", "mov": "mov_text", "mkv": "srt", "webm": "webvtt"}
#: What the matroska muxer takes as it is: no conversion, so ASS styling survives.
MKV_COPIES = frozenset({"subrip", "ass", "ssa", "webvtt", *PICTURE_CODECS})
#: The ffmpeg filter (libass) that draws text subtitles; a node whose build lacks it cannot
#: burn in (schemas.encoderneeds routes such jobs elsewhere).
BURN_FILTER = "subtitles"


@dataclass(frozen=True, slots=True)
class SubTrack:
    """One kept track: its stream index in the input and the encoder (or `copy`) it gets."""

    index: int
    encoder: str
    codec: str = ""
    language: str | None = None
    #: A trimmed output's copy of the track, cut at the start (see cut_args): read as an input
    #: of its own instead of stream `index`.
    file: Path | None = None


@dataclass(frozen=True, slots=True)
class Subtitles:
    keep: tuple[SubTrack, ...] = ()
    #: The burned track's index among the input's subtitle streams (the filter's `si`).
    burn: int | None = None
    notes: tuple[str, ...] = ()
    #: Copy the input's attachments (the fonts ASS styling names) into the mkv output.
    fonts: bool = False


NO_SUBTITLES = Subtitles()


def subtitle_streams(info: ProbeInfo) -> list[StreamInfo]:
    return [s for s in info.streams if s.type == "subtitle"]


def describe(n: int, stream: StreamInfo) -> str:
    lang = f", {stream.language}" if stream.language else ""
    return f"subtitle track #{n} ({stream.codec}{lang})"


def plan_subtitles(op: Transcode, info: ProbeInfo) -> Subtitles:
    """InputError when the track to burn in is missing or a picture."""
    subs = subtitle_streams(info)
    burn = None if op.burn_subtitles is None else burn_index(op.burn_subtitles, subs)
    if op.subtitles == "drop":
        return Subtitles(burn=burn)
    container = op.settled_container
    encoder = TEXT_ENCODER.get(container)
    left = [(n, s) for n, s in enumerate(subs) if n != burn]
    if encoder is None:
        note = f"{len(left)} subtitle track(s) left out: {container} holds audio only"
        return Subtitles(burn=burn, notes=(note,) if left else ())
    keep, notes = [], []
    for n, s in left:
        if s.codec in PICTURE_CODECS and op.start_seconds and container == "mkv":
            notes.append(f"{describe(n, s)} left out: picture subtitles are not cut for a "
                         "trimmed output (`start_seconds`)")  # fmt: skip
        elif container == "mkv" and s.codec in MKV_COPIES:
            keep.append(SubTrack(s.index, "copy", s.codec, s.language))
        elif s.codec in TEXT_CODECS:
            keep.append(SubTrack(s.index, encoder, s.codec, s.language))
        elif s.codec in PICTURE_CODECS:
            notes.append(f"{describe(n, s)} left out: picture subtitles cannot become "
                         f"{container} text (an mkv output keeps them)")  # fmt: skip
        else:
            notes.append(f"{describe(n, s)} left out: not a subtitle format this node converts")
    styled = container == "mkv" and any(t.codec in ("ass", "ssa") for t in keep)
    fonts = styled and any(s.type == "attachment" for s in info.streams)
    return Subtitles(tuple(keep), burn, tuple(notes), fonts)


def burn_index(want: int | str, subs: list[StreamInfo]) -> int:
    """The index among `subs` of the track `burn_subtitles` names (an index or a language)."""
    if isinstance(want, int):
        if want >= len(subs):
            raise InputError(f"`burn_subtitles`: the input has no subtitle track #{want} "
                             f"({len(subs)} found)")  # fmt: skip
        n = want
    else:
        n = next((i for i, s in enumerate(subs) if s.language == want), -1)
        if n < 0:
            tags = ", ".join(sorted({s.language or "untagged" for s in subs})) or "none"
            raise InputError(f"`burn_subtitles`: the input has no subtitle track tagged "
                             f"{want!r} (its tracks: {tags})")  # fmt: skip
    if subs[n].codec not in TEXT_CODECS:
        raise InputError(f"`burn_subtitles`: {describe(n, subs[n])} is not text; only text "
                         "tracks can be burned in")  # fmt: skip
    return n


def subtitle_args(subs: Subtitles, first_input: int) -> list[str]:
    """`-map` and codec per kept track, numbered among the output's subtitle streams; cut
    tracks are the inputs from `first_input` on (subtitle_inputs), tagged with the language
    their files cannot hold."""
    args, n = [], first_input
    for k, track in enumerate(subs.keep):
        if track.file is None:
            args += ["-map", f"0:{track.index}", f"-c:s:{k}", track.encoder]
            continue
        args += ["-map", f"{n}:0", f"-c:s:{k}", track.encoder]
        args += [f"-metadata:s:s:{k}", f"language={track.language}"] if track.language else []
        n += 1
    return [*args, "-map", "0:t"] if subs.fonts else args


def cut_format(codec: str) -> str:
    """The text format a track is cut into: ASS keeps its styling, the rest becomes SubRip."""
    return "ass" if codec in ("ass", "ssa") else "srt"


def cut_args(
    src: Path, subs: Subtitles, scratch: Path, start: float, guard: tuple[str, ...]
) -> tuple[list[str], Subtitles]:
    """One ffmpeg run that writes each kept track from `start` on into scratch, and the plan
    that reads those files. ffmpeg's input-side seek (the encode's) leaves subtitle packets where
    they were, and cues before the cut would push the whole output's timeline later; an
    output-side seek drops them (a cue that began before `start` goes too)."""
    args = [*guard, "-i", ffmpeg_arg(src)]
    cut = []
    for k, track in enumerate(subs.keep):
        fmt = cut_format(track.codec)
        path = scratch / f"subtitles-{k}.{fmt}"
        args += ["-map", f"0:{track.index}", "-ss", f"{start:.6f}", "-c:s", fmt, "-f", fmt]
        args.append(ffmpeg_arg(path))
        encoder = fmt if track.encoder == "copy" else track.encoder
        cut.append(replace(track, encoder=encoder, file=path))
    return args, replace(subs, keep=tuple(cut))


def subtitle_inputs(subs: Subtitles, start: float | None) -> list[str]:
    """The cut tracks as inputs, moved back by `start` to the output's clock."""
    args = []
    for track in subs.keep:
        if track.file is not None:
            fmt = cut_format(track.codec)
            args += ["-itsoffset", f"-{start or 0:.6f}", "-protocol_whitelist", "file", "-f", fmt]
            args += ["-i", ffmpeg_arg(track.file)]
    return args


def has_cues(path: Path) -> bool:
    """Whether a cut track kept any cue (blocking: a read)."""
    text = path.read_text(errors="replace")
    return "-->" in text or "\nDialogue:" in text


def _escape(value: str) -> str:
    """A filter option value escaped twice: for the option parser, then the graph parser."""
    value = re.sub(r"([\\':])", r"\\\1", value)
    return re.sub(r"([\\'\[\],;])", r"\\\1", value)


def burn_filter(src: Path, si: int, start: float | None) -> str:
    """libass draws by frame time; an input-side seek starts frames at 0, so they are shifted
    back to the source's clock around it."""
    draw = f"{BURN_FILTER}=filename={_escape(str(src))}:si={si}"
    if not start:
        return draw
    shift = f"{start:.6f}/TB"
    return f"setpts=PTS+{shift},{draw},setpts=PTS-{shift}"


#: ISO 639-2 codes (both the bibliographic and terminology forms) -> the BCP 47 tag and name
#: an HLS player shows; other codes pass as they are (BCP 47 takes three-letter codes too).
_LANGUAGES = {
    "eng": ("en", "English"), "fra": ("fr", "Français"), "fre": ("fr", "Français"),
    "deu": ("de", "Deutsch"), "ger": ("de", "Deutsch"), "spa": ("es", "Español"),
    "ita": ("it", "Italiano"), "por": ("pt", "Português"), "nld": ("nl", "Nederlands"),
    "dut": ("nl", "Nederlands"), "jpn": ("ja", "日本語"), "zho": ("zh", "中文"),
    "chi": ("zh", "中文"), "kor": ("ko", "한국어"), "rus": ("ru", "Русский"),
    "ara": ("ar", "العربية"), "pol": ("pl", "Polski"), "swe": ("sv", "Svenska"),
}  # fmt: skip
#: The HLS group every variant names for its subtitles.
HLS_GROUP = "subs"


def hls_language(code: str | None) -> tuple[str | None, str | None]:
    """An ISO 639-2 code's BCP 47 tag and display name for an HLS playlist (as given when
    unknown; None for none)."""
    return _LANGUAGES.get(code or "", (code, code))


def text_tracks(info: ProbeInfo) -> list[StreamInfo]:
    """The subtitle streams a package can turn into WebVTT renditions."""
    return [s for s in subtitle_streams(info) if s.codec in TEXT_CODECS]


def rendition_tracks(mode: str, info: ProbeInfo) -> tuple[tuple[StreamInfo, ...], list[str]]:
    """The text tracks that become WebVTT renditions under `subtitles` `mode`, and a note for
    every track left out."""
    every = subtitle_streams(info)
    if mode == "drop" or not every:
        return (), []
    texts = text_tracks(info)
    notes = [f"{describe(n, s)} left out: only text subtitles become WebVTT renditions"
             for n, s in enumerate(every) if s not in texts]  # fmt: skip
    return tuple(texts), notes


def webvtt_outputs(tracks: list[StreamInfo], out: Path, source: int = 0) -> list[str]:
    """One WebVTT file per text track of input `source` (the ladder's source), as further
    outputs of the ffmpeg run that writes the HLS package."""
    args = []
    for k, s in enumerate(tracks):
        args += ["-map", f"{source}:{s.index}", "-c:s", "webvtt", "-f", "webvtt"]
        args.append(f"{out}/subs_{k}.vtt")
    return args


def vtt_playlist(k: int, duration_s: float) -> str:
    """A media playlist of the whole track as one WebVTT segment."""
    seconds = max(1, math.ceil(duration_s))
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{seconds}\n"
            f"#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-PLAYLIST-TYPE:VOD\n"
            f"#EXTINF:{duration_s:.3f},\nsubs_{k}.vtt\n#EXT-X-ENDLIST\n")  # fmt: skip


def with_subtitles(master: str, tracks: list[StreamInfo]) -> str:
    """The master playlist with a SUBTITLES rendition per track, named by every variant."""
    media = []
    for k, s in enumerate(tracks):
        tag, name = hls_language(s.language)
        attrs = f'TYPE=SUBTITLES,GROUP-ID="{HLS_GROUP}",NAME="{name or f"Subtitles {k + 1}"}"'
        if name and any(t.language == s.language for t in tracks[:k]):
            attrs = attrs[:-1] + f' {k + 1}"'  # NAME must be unique within the group
        if tag:
            attrs += f',LANGUAGE="{tag}"'
        media.append(f'#EXT-X-MEDIA:{attrs},DEFAULT=NO,AUTOSELECT=YES,URI="subs_{k}.m3u8"')
    lines, placed = [], False
    for line in master.splitlines():
        if line.startswith("#EXT-X-STREAM-INF:"):
            if not placed:
                lines += [*media, ""]
                placed = True
            line += f',SUBTITLES="{HLS_GROUP}"'
        lines.append(line)
    return "\n".join(lines) + "\n"


def with_dash_subtitles(mpd: str, tracks: list[StreamInfo]) -> str:
    """The DASH manifest with a text AdaptationSet per track: its WebVTT file whole, as a
    sidecar (the dash muxer writes no text representations of its own)."""
    sets = []
    for k, s in enumerate(tracks):
        tag, _ = hls_language(s.language)
        lang = f' lang="{tag}"' if tag else ""
        sets.append(
            f'\t\t<AdaptationSet id="{100 + k}" contentType="text" mimeType="text/vtt"{lang}>\n'
            '\t\t\t<Role schemeIdUri="urn:mpeg:dash:role:2011" value="subtitle"/>\n'
            f'\t\t\t<Representation id="subs_{k}" bandwidth="256">\n'
            f"\t\t\t\t<BaseURL>subs_{k}.vtt</BaseURL>\n"
            "\t\t\t</Representation>\n\t\t</AdaptationSet>\n"
        )  # fmt: skip
    head, period, tail = mpd.rpartition("\t</Period>")
    if not period:
        head, period, tail = mpd.rpartition("</Period>")
    if not period:
        raise ValueError("the DASH manifest has no Period")
    return head + "".join(sets) + period + tail


_MAP = re.compile(r'^#EXT-X-MAP:URI="([^"]+)"', re.M)
_SEGMENT = re.compile(r"^([^#\s].*)$", re.M)


def first_segment(playlist: str) -> tuple[str | None, str]:
    """A media playlist's init segment (None: TS segments have none) and its first segment."""
    init = _MAP.search(playlist)
    segment = _SEGMENT.search(playlist)
    if segment is None:
        raise ValueError("the playlist names no segment")
    return (init.group(1) if init else None), segment.group(1).strip()


_VIDEO = re.compile(r": Video: .*$", re.M)
_START = re.compile(r", start (\d+(?:\.\d+)?)")


def video_start(banner: str) -> float | None:
    """The first video stream's start time from `ffmpeg -i`'s banner of a segment (ffmpeg
    leaves a start of 0 unsaid: video without reordering delay); None: no video stream."""
    line = _VIDEO.search(banner)
    if line is None:
        return None
    found = _START.search(line.group(0))
    return float(found.group(1)) if found else 0.0


def with_timestamp_map(vtt: str, mpegts_s: float) -> str:
    """The WebVTT file with cue time 0 (the source's first picture) mapped to `mpegts_s` on the
    segments' 90 kHz clock; without the header HLS maps it to 0, where no picture is."""
    head, _, rest = vtt.partition("\n")
    stamp = f"X-TIMESTAMP-MAP=MPEGTS:{round(mpegts_s * 90000)},LOCAL:00:00:00.000"
    return f"{head}\n{stamp}\n{rest}"
