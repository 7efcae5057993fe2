"""The audio side of a transcode: audio-only containers, channel layout, sample rate, track
choice, loudness normalisation, and the rules between them (checked when a job is decoded)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.common import Part

AudioLayout = Literal["mono", "stereo", "5.1"]
SampleRate = Literal[8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 88200, 96000]
#: An ISO 639-2 code as containers tag tracks (`eng`, `fra`, `deu`).
Language = Annotated[str, msgspec.Meta(pattern=r"^[a-z]{3}$")]

CHANNELS = {"mono": 1, "stereo": 2, "5.1": 6}


class Loudness(Part, kw_only=True):
    """EBU R128 targets for two-pass `loudnorm`: integrated loudness (LUFS), true peak (dBTP)
    and loudness range (LU)."""

    integrated: Annotated[float, msgspec.Meta(ge=-70, le=-5)] = -23.0
    true_peak: Annotated[float, msgspec.Meta(ge=-9, le=0)] = -1.0
    lra: Annotated[float, msgspec.Meta(ge=1, le=50)] = 7.0


#: Audio codecs each container carries (`copy` is checked by the muxer against the source).
AUDIO_IN: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "opus", "mp3", "copy", "none"}),
    "mov": frozenset({"aac", "mp3", "copy", "none"}),
    "mkv": frozenset({"aac", "opus", "mp3", "copy", "none"}),
    "webm": frozenset({"opus", "none"}),
    "m4a": frozenset({"aac", "copy"}),
    "ogg": frozenset({"opus", "copy"}),
    "mp3": frozenset({"mp3", "copy"}),
}
#: Containers that hold audio only: their jobs need no video stream and write none.
AUDIO_ONLY = frozenset({"m4a", "ogg", "mp3"})
#: Sample rates each encoder takes (libopus: its five; MP3: up to 48 kHz).
RATES: dict[str, frozenset[int]] = {
    "opus": frozenset({8000, 12000, 16000, 24000, 48000}),
    "mp3": frozenset({8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000}),
}


def check_audio(
    container: str,
    audio: str,
    *,
    layout: str | None,
    rate: int | None,
    stream: int | None,
    video: bool,
    loudness: bool = False,
) -> None:
    """ValueError naming the first audio choice the container or encoder cannot honour."""
    if not video and (audio == "none" or stream is None):
        raise ValueError("an output without video needs audio: set `audio_codec` and "
                         "`audio_stream`")  # fmt: skip
    if audio not in AUDIO_IN[container]:
        takes = ", ".join(sorted(AUDIO_IN[container] - {"none"}))
        raise ValueError(f"{container} carries only {takes} audio, not {audio!r}")
    if (layout is not None or rate is not None) and audio in ("copy", "none"):
        raise ValueError(f"`audio_layout` and `audio_sample_rate` need re-encoded audio, "
                         f"not `audio_codec` {audio!r}")  # fmt: skip
    if loudness and (audio in ("copy", "none") or stream is None):
        what = "`audio_stream` null" if stream is None else f"`audio_codec` {audio!r}"
        raise ValueError(f"`loudness` needs re-encoded audio, not {what}")
    if layout == "5.1" and audio == "mp3":
        raise ValueError("mp3 carries mono or stereo only, not 5.1")
    if rate is not None and rate not in RATES.get(audio, frozenset({rate})):
        takes = ", ".join(str(r) for r in sorted(RATES[audio]))
        raise ValueError(f"{audio} takes sample rates {takes}; not {rate}")


#: Most alternate audio tracks one package carries.
MAX_AUDIO_RENDITIONS = 8
#: A track label as players list it: no quote or control character (it goes into the playlist
#: as a quoted attribute).
RenditionName = Annotated[str, msgspec.Meta(pattern=r'^[^"\x00-\x1f\x7f]{1,40}$')]


class AudioRendition(Part, kw_only=True):
    """One alternate audio track of a package: an input audio track encoded to AAC on its own,
    which every video rung refers to (HLS: an AUDIO group; DASH: an adaptation set per
    language)."""

    #: The input's first audio track tagged with this language; without one, `stream`.
    language: Language | None = None
    #: The input audio track (0: the first) when no `language` names it.
    stream: Annotated[int, msgspec.Meta(ge=0, le=63)] | None = None
    bitrate_kbps: Annotated[int, msgspec.Meta(ge=8, le=1024)] = 128
    layout: AudioLayout | None = None
    #: The label players show; default the language, else `audio N` (N from 1).
    name: RenditionName | None = None
    #: The track players pick first; at most one (none: the first rendition).
    default: bool = False

    def __post_init__(self) -> None:
        if self.language is not None and self.stream is not None:
            raise ValueError("an audio rendition names its track by `language` or by "
                             "`stream`, not both")  # fmt: skip


def rendition_names(renditions: list[AudioRendition]) -> list[str]:
    """Each rendition's label (ValueError when two end up alike, or two are `default`)."""
    names = [r.name or r.language or f"audio {i + 1}" for i, r in enumerate(renditions)]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"audio renditions need distinct names (set `name`): {', '.join(twice)} "
                         "appears more than once")  # fmt: skip
    if sum(r.default for r in renditions) > 1:
        raise ValueError("at most one audio rendition may be `default`")
    return names
