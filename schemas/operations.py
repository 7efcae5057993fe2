"""The operations a job can ask for: a tagged union on the `op` field."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

import msgspec

from schemas.audioopts import (
    AUDIO_ONLY,
    MAX_AUDIO_RENDITIONS,
    AudioLayout,
    AudioRendition,
    Language,
    Loudness,
    SampleRate,
    check_audio,
    rendition_names,
)
from schemas.common import MediaUri, Part
from schemas.videoopts import (
    Crop,
    HdrMode,
    Level,
    Overlay,
    PixFmt,
    Profile,
    SubtitleIndex,
    SubtitleMode,
    check_hdr_keep,
    check_picture,
)

VideoCodec = Literal["h264", "hevc", "av1", "vp9", "none"]
AudioCodec = Literal["aac", "opus", "mp3", "copy", "none"]
Container = Literal["mp4", "mkv", "webm", "mov", "m4a", "ogg", "mp3"]
Preset = Literal["ultrafast", "veryfast", "fast", "medium", "slow", "slower", "veryslow"]
RateControl = Literal["crf", "cbr", "vbr", "capped_crf", "two_pass"]

Width = Annotated[int, msgspec.Meta(ge=16, le=8192)]
Height = Annotated[int, msgspec.Meta(ge=16, le=8192)]
Kbps = Annotated[int, msgspec.Meta(ge=16, le=200_000)]
AudioKbps = Annotated[int, msgspec.Meta(ge=8, le=1024)]
Crf = Annotated[int, msgspec.Meta(ge=0, le=63)]
Fps = Annotated[float, msgspec.Meta(gt=0, le=240)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=7 * 24 * 3600)]
PositiveSeconds = Annotated[float, msgspec.Meta(gt=0, le=7 * 24 * 3600)]

# Containers that can carry each video codec (`none`: audio only); webm takes VP9/AV1.
CONTAINER_CODECS: dict[str, frozenset[str]] = {
    "mp4": frozenset({"h264", "hevc", "av1", "vp9", "none"}),
    "mov": frozenset({"h264", "hevc", "none"}),
    "mkv": frozenset({"h264", "hevc", "av1", "vp9", "none"}),
    "webm": frozenset({"vp9", "av1", "none"}),
    "m4a": frozenset({"none"}),
    "ogg": frozenset({"none"}),
    "mp3": frozenset({"none"}),
}
CRF_MAX = {"h264": 51, "hevc": 51, "av1": 63, "vp9": 63}
#: Output file extensions a transcode writes, and the container each names.
EXTENSIONS: dict[str, Container] = {
    "mp4": "mp4", "m4v": "mp4", "mkv": "mkv", "webm": "webm", "mov": "mov",
    "m4a": "m4a", "ogg": "ogg", "oga": "ogg", "opus": "ogg", "mp3": "mp3",
}  # fmt: skip
#: The audio codec a container gets when the job names none.
DEFAULT_AUDIO: dict[str, AudioCodec] = {
    "mp4": "aac", "mov": "aac", "mkv": "aac", "webm": "opus", "m4a": "aac", "ogg": "opus",
    "mp3": "mp3",
}  # fmt: skip
#: Options that shape pictures: refused for an output without video.
_VIDEO_ONLY = ("width", "height", "fps", "crop", "overlay", "gop_size", "profile", "level",
               "pix_fmt", "burn_subtitles")  # fmt: skip


def output_extension(uri: str) -> str:
    """The lowercase extension (no dot) of the last path segment of `uri`; "" when it has none."""
    return PurePosixPath(unquote(urlsplit(uri).path)).suffix.lstrip(".").lower()


def _check_rate(codec: str, crf: int | None, bitrate: int | None, rc: str) -> None:
    if rc in ("crf", "capped_crf") and crf is None:
        raise ValueError(f"rate_control {rc!r} needs `crf`")
    if rc in ("cbr", "vbr", "capped_crf", "two_pass") and bitrate is None:
        raise ValueError(f"rate_control {rc!r} needs `bitrate_kbps`")
    if crf is not None and crf > CRF_MAX[codec]:
        raise ValueError(f"`crf` {crf} is above {CRF_MAX[codec]} for {codec}")


class Transcode(Part, kw_only=True, tag="transcode", tag_field="op", omit_defaults=True):
    """Fields at their defaults are left out when encoded, so a job that uses none of the
    options added in a release still decodes on a node of the release before (rolling upgrade);
    the settled `codec`, `container` and `audio_codec` always travel."""

    #: Default: `none` (no video) for an audio-only container (m4a, ogg, mp3), else `h264`.
    codec: VideoCodec | None = None
    rate_control: RateControl = "crf"
    crf: Crf | None = 23
    bitrate_kbps: Kbps | None = None
    preset: Preset = "medium"
    width: Width | None = None
    height: Height | None = None
    fps: Fps | None = None
    #: Default: the container's usual codec (`opus` for webm and ogg, `mp3` for mp3, else `aac`).
    audio_codec: AudioCodec | None = None
    audio_bitrate_kbps: AudioKbps = 128
    #: Default: the one the output's extension names (`mp4` for a name without one). A value
    #: that disagrees with the extension is refused.
    container: Container | None = None
    video_stream: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    audio_stream: Annotated[int, msgspec.Meta(ge=0, le=64)] | None = 0
    #: Take the first audio track tagged with this language (ISO 639-2) instead of
    #: `audio_stream`; an input without one fails.
    audio_language: Language | None = None
    #: `all`: keep every audio track (each encoded alike, language tags kept) instead of one.
    audio_tracks: Literal["one", "all"] = "one"
    #: Default: the source's.
    audio_layout: AudioLayout | None = None
    audio_sample_rate: SampleRate | None = None
    #: Normalise every kept audio track to these EBU R128 targets (two-pass `loudnorm`).
    loudness: Loudness | None = None
    hw_decode: bool = True
    #: Trim: start this far into the input (an input-side seek, frame-accurate when encoding).
    start_seconds: Seconds | None = None
    #: Trim: at most this much of the output (from `start_seconds`, else from the start).
    duration_seconds: PositiveSeconds | None = None
    #: Keep only this window of the picture (before scaling).
    crop: Crop | None = None
    #: Deinterlace frames flagged interlaced (bwdif); progressive frames pass untouched.
    deinterlace: bool = False
    #: A keyframe exactly every this many frames (scene cuts add none), e.g. 2 s for packaging.
    gop_size: Annotated[int, msgspec.Meta(ge=1, le=1200)] | None = None
    #: GOPs reference no frame of the one before (IDR, not CRA, keyframes in HEVC).
    closed_gop: bool = False
    profile: Profile | None = None
    level: Level | None = None
    #: Default: `yuv420p`, or `yuv420p10le` for a deeper source and a codec other than h264.
    pix_fmt: PixFmt | None = None
    #: A still image (watermark) drawn over every frame; its URI is checked like `input`.
    overlay: Overlay | None = None
    #: An HDR (PQ or HLG) source: `auto` keeps it HDR when the output is 10-bit and refuses an
    #: 8-bit output (it would stay tagged HDR); `keep` insists on HDR; `tonemap` makes SDR
    #: (BT.709). An SDR source ignores it.
    hdr: HdrMode = "auto"
    #: `keep`: the input's subtitle tracks go into the output as text the container carries
    #: (mp4/mov `mov_text`, mkv SubRip/ASS as they are, webm WebVTT), language tags kept;
    #: picture subtitles (DVD, PGS) only into mkv. Audio-only containers carry none. Every
    #: track left out is named in the result's notes.
    subtitles: SubtitleMode = "keep"
    #: Draw one text subtitle track onto the picture (libass): its index among the input's
    #: subtitle streams, or a language (the first track tagged with it). It is not also kept.
    burn_subtitles: SubtitleIndex | Language | None = None

    def __post_init__(self) -> None:
        if self.codec is not None or self.container is not None:
            self._check(self.container)

    def for_output(self, output: str) -> None:
        """Settle `container`, then the default codecs, from the output's extension.

        JobSpec calls it, so every decoded job has them set and re-encodes them explicitly
        (a reader of an older release then sees the same values).
        """
        ext = output_extension(output)
        if ext:
            named = EXTENSIONS.get(ext)
            if named is None:
                known = ", ".join(f".{e}" for e in EXTENSIONS)
                raise ValueError(f"output extension .{ext} names no container a transcode "
                                 f"writes; use one of {known}")  # fmt: skip
            if self.container is not None and self.container != named:
                raise ValueError(
                    f"`container` {self.container!r} contradicts the output's extension .{ext} "
                    f"({named}): leave `container` out or rename the output"
                )
            self.container = named
        elif self.container is None:
            self.container = "mp4"
        self.codec, self.audio_codec = self.video_codec, self.settled_audio
        self._check(self.container)

    @property
    def settled_container(self) -> Container:
        """`container` once settled (`for_output`); mp4 for a Transcode outside a JobSpec."""
        return self.container or "mp4"

    @property
    def video_codec(self) -> VideoCodec:
        """`codec` once settled; `none` means the output has no video."""
        if self.codec is not None:
            return self.codec
        return "none" if self.settled_container in AUDIO_ONLY else "h264"

    @property
    def settled_audio(self) -> AudioCodec:
        return self.audio_codec or DEFAULT_AUDIO[self.settled_container]

    def _check(self, container: Container | None) -> None:
        """Every rule between fields; those about the container only once it is known."""
        codec = self.video_codec
        if container is not None and codec not in CONTAINER_CODECS[container]:
            only = " (it holds audio only)" if container in AUDIO_ONLY else ""
            raise ValueError(f"codec {codec!r} cannot go in container {container!r}{only}")
        if codec == "none":
            given = [name for name in _VIDEO_ONLY if getattr(self, name) is not None]
            given += [name for name in ("deinterlace", "closed_gop") if getattr(self, name)]
            if given or self.hdr != "auto":
                named = ", ".join(f"`{n}`" for n in given or ["hdr"])
                raise ValueError(f"{named} shape video, but this output has none (codec 'none')")
        else:
            _check_rate(codec, self.crf, self.bitrate_kbps, self.rate_control)
            check_picture(
                codec, profile=self.profile, level=self.level, pix_fmt=self.pix_fmt,
                gop_size=self.gop_size, closed_gop=self.closed_gop,
            )  # fmt: skip
            if self.hdr == "keep":
                check_hdr_keep(codec, self.profile, self.pix_fmt)
        if self.audio_tracks == "all" and self.audio_language is not None:
            raise ValueError("`audio_tracks` 'all' keeps every track: leave out `audio_language`")
        if container is not None:
            check_audio(
                container, self.settled_audio, layout=self.audio_layout,
                rate=self.audio_sample_rate, stream=self.audio_stream, video=codec != "none",
                loudness=self.loudness is not None,
            )  # fmt: skip
            if self.audio_tracks == "all" and container == "mp3":
                raise ValueError("mp3 holds one audio track: `audio_tracks` 'all' needs another "
                                 "container")  # fmt: skip


class Analyze(Part, kw_only=True, tag="analyze", tag_field="op"):
    """Quality of the job's input (distorted) against `reference`."""

    reference: MediaUri
    vmaf: bool = True
    psnr: bool = True
    ssim: bool = True
    vmaf_model: Literal["auto", "vmaf_v0.6.1", "vmaf_4k_v0.6.1"] = "auto"
    frame_log: bool = False
    subsample: Annotated[int, msgspec.Meta(ge=1, le=100)] = 1

    def __post_init__(self) -> None:
        if not (self.vmaf or self.psnr or self.ssim):
            raise ValueError("analyze needs at least one of vmaf, psnr, ssim")


class Rung(Part, kw_only=True):
    height: Height
    bitrate_kbps: Kbps
    codec: Literal["h264", "hevc"] = "h264"
    width: Width | None = None
    audio_bitrate_kbps: AudioKbps | None = 128


class Package(Part, kw_only=True, tag="package", tag_field="op", omit_defaults=True):
    """Fields at their defaults are left out when encoded (see Transcode)."""

    hls: bool = True
    dash: bool = False
    ladder: Annotated[list[Rung], msgspec.Meta(min_length=1, max_length=10)]
    segment_seconds: Annotated[float, msgspec.Meta(ge=1, le=30)] = 4.0
    hls_segment_type: Literal["fmp4", "mpegts"] = "fmp4"
    preset: Preset = "veryfast"
    #: `keep`: each text subtitle track of the input becomes a WebVTT rendition of the HLS
    #: package, or a text/vtt adaptation set of the DASH manifest.
    subtitles: SubtitleMode = "keep"
    #: Alternate audio tracks (languages, bitrates), each encoded once and shared by every rung;
    #: the rungs then carry no audio of their own (their `audio_bitrate_kbps` is not used).
    #: Empty: each rung muxes the first audio track at its own `audio_bitrate_kbps`.
    audio_renditions: Annotated[
        list[AudioRendition], msgspec.Meta(max_length=MAX_AUDIO_RENDITIONS)
    ] = []
    #: For an HDR10 (PQ), HLG or Dolby Vision source: `auto` refuses it (the rungs are 8-bit
    #: and would stay tagged HDR, which plays washed out), `tonemap` makes 8-bit BT.709 SDR
    #: rungs. An SDR source ignores it.
    hdr: Literal["auto", "tonemap"] = "auto"

    def __post_init__(self) -> None:
        if not (self.hls or self.dash):
            raise ValueError("package needs `hls` or `dash`")
        rendition_names(self.audio_renditions)
        heights = [r.height for r in self.ladder]
        if len(set(heights)) != len(heights):
            raise ValueError("ladder rungs must have distinct heights")


#: The fixed ladder's bitrates (kbps) per height: `flotilla submit package --ladder`'s defaults
#: and the baseline a per-title ladder's savings are counted against.
LADDER_KBPS = {2160: 16000, 1440: 9000, 1080: 5000, 720: 2800, 540: 1800, 480: 1200, 360: 700}
PERTITLE_CODECS = ("h264", "hevc")
QUALITY_METRICS = ("vmaf", "psnr", "ssim")
# Plain strings checked in __post_init__, so a refusal names the allowed values; the JSON
# Schema still lists them.
PerTitleCodec = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(PERTITLE_CODECS)})]
QualityMetric = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(QUALITY_METRICS)})]
#: What each target metric's value may be: VMAF 0..100, PSNR dB, SSIM 0..1.
METRIC_RANGE: dict[str, tuple[float, float]] = {
    "vmaf": (0.0, 100.0), "psnr": (10.0, 100.0), "ssim": (0.0, 1.0),
}  # fmt: skip


def fixed_ladder_kbps(height: int) -> int:
    """The fixed ladder's bitrate for a rung `height` tall (4 kbps per line, at least 200, for
    heights the table does not name)."""
    return LADDER_KBPS.get(height, max(200, height * 4))


class PerTitleRung(Part, kw_only=True):
    height: Height
    #: A VBV cap for the final encode (maxrate, with a buffer of twice it); None: pure CRF.
    max_bitrate_kbps: Kbps | None = None
    #: The fixed ladder's bitrate this rung is compared with; default `fixed_ladder_kbps`.
    baseline_kbps: Kbps | None = None


class PerTitle(Part, kw_only=True, tag="pertitle", tag_field="op", omit_defaults=True):
    """A quality-targeted ladder: per rung, the highest CRF whose samples reach `target`.
    Fields at their defaults are left out when encoded (see Transcode)."""

    rungs: Annotated[list[PerTitleRung], msgspec.Meta(min_length=1, max_length=10)]
    codec: PerTitleCodec = "h264"
    metric: QualityMetric = "vmaf"
    #: The quality every rung aims at, in `metric`'s unit (VMAF 0..100, PSNR dB, SSIM 0..1).
    target: float = 93.0
    samples: Annotated[int, msgspec.Meta(ge=1, le=20)] = 3
    sample_seconds: Annotated[float, msgspec.Meta(ge=0.5, le=60)] = 2.0
    crf_min: Crf = 16
    crf_max: Crf = 40
    #: Sample encodes per rung the CRF search may spend.
    max_probes: Annotated[int, msgspec.Meta(ge=2, le=12)] = 6
    preset: Preset = "medium"
    #: Also write an HLS package (fMP4) of the kept rungs, next to the rung files.
    hls: bool = False
    segment_seconds: Annotated[float, msgspec.Meta(ge=1, le=30)] = 4.0
    #: `keep`: each text subtitle track of the input becomes a WebVTT rendition of the HLS
    #: package, as in the package operation (the rung files stay video only).
    subtitles: SubtitleMode = "keep"

    def __post_init__(self) -> None:
        if self.codec not in PERTITLE_CODECS:
            raise ValueError(f"codec {self.codec!r}: use one of {', '.join(PERTITLE_CODECS)}")
        if self.metric not in QUALITY_METRICS:
            raise ValueError(f"metric {self.metric!r}: use one of {', '.join(QUALITY_METRICS)}")
        lo, hi = METRIC_RANGE[self.metric]
        if not lo <= self.target <= hi:
            raise ValueError(f"target {self.target:g} is outside {lo:g}..{hi:g} for "
                             f"metric {self.metric!r}")  # fmt: skip
        top = CRF_MAX[self.codec]
        if not self.crf_min < self.crf_max <= top:
            raise ValueError(f"crf_min {self.crf_min} must be below crf_max {self.crf_max}, "
                             f"which is at most {top} for {self.codec}")  # fmt: skip
        heights = [r.height for r in self.rungs]
        if len(set(heights)) != len(heights):
            raise ValueError("rungs must have distinct heights")
        odd = [h for h in heights if h % 2]
        if odd:
            raise ValueError(f"rung heights must be even (4:2:0 video): {odd}")


class Probe(Part, kw_only=True, tag="probe", tag_field="op"):
    deep: bool = False


class Thumbnail(Part, kw_only=True, tag="thumbnail", tag_field="op"):
    at_seconds: Seconds = 0.0
    sprite: bool = False
    tiles: Annotated[int, msgspec.Meta(ge=1, le=400)] = 16
    columns: Annotated[int, msgspec.Meta(ge=1, le=40)] = 4
    width: Annotated[int, msgspec.Meta(ge=16, le=3840)] = 320
    format: Literal["jpg", "png", "webp"] = "jpg"


#: Most chunks one concat joins (a chunked encode uses at most 18: schemas/chunked.py).
MAX_CONCAT_CHUNKS = 100
#: Output extensions a concat writes: containers a stream copy of H.264/HEVC goes into.
CONCAT_EXTENSIONS = ("mp4", "m4v", "mov", "mkv")


class Concat(Part, kw_only=True, tag="concat", tag_field="op"):
    """Join video chunks, in order, by stream copy (no re-encode) and mux `audio` in; then
    verify the result: it decodes in full, has every chunk's frames, and its audio and video
    end within `max_av_drift_ms` of each other.

    The chunks must be encoded alike (codec, size, pixel format) and each must start on a
    keyframe (a chunk is an independent encode, so it does). The job's `input` is the first
    chunk: a workflow's join step names it `step:<first chunk>`, so it runs after it.
    """

    chunks: Annotated[list[MediaUri], msgspec.Meta(min_length=1, max_length=MAX_CONCAT_CHUNKS)]
    #: Audio for the whole output (its first audio stream); None: video only.
    audio: MediaUri | None = None
    #: Most the audio and video durations of the joined file may differ.
    max_av_drift_ms: Annotated[float, msgspec.Meta(ge=0, le=10_000)] = 100.0

    def check_job(self, input_uri: str, output: str | None) -> None:
        """The rules between the operation and its job (JobSpec calls it)."""
        if input_uri != self.chunks[0]:
            raise ValueError("a concat job's `input` is its first chunk (`chunks[0]`)")
        ext = output_extension(output or "")
        if ext not in CONCAT_EXTENSIONS:
            takes = ", ".join(f".{e}" for e in CONCAT_EXTENSIONS)
            raise ValueError(f"a concat writes {takes}, not {'.' + ext if ext else 'no extension'}")


class Canary(Part, kw_only=True, tag="canary", tag_field="op"):
    """Runs no ffmpeg: proves the dispatch path end to end."""

    sleep_seconds: Annotated[float, msgspec.Meta(ge=0, le=60)] = 0.0


Operation = Transcode | Analyze | Package | PerTitle | Probe | Thumbnail | Concat | Canary
OPERATION_NAMES = ("transcode", "analyze", "package", "pertitle", "probe", "thumbnail", "concat",
                   "canary")  # fmt: skip
