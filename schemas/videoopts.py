"""The picture options of a transcode (trim, crop, deinterlace, GOP, profile/level, pixel format,
overlay, subtitles) and the rules between them, checked when a job is decoded so a node never sees a
combination ffmpeg would refuse or silently bend."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

import msgspec

from schemas.common import MediaUri, Part

PixFmt = Literal["yuv420p", "yuv420p10le", "yuv422p", "yuv422p10le", "yuv444p", "yuv444p10le"]
Profile = Literal["baseline", "main", "high", "main10"]
Level = Literal["3.0", "3.1", "4.0", "4.1", "4.2", "5.0", "5.1", "5.2", "6.0", "6.1", "6.2"]
Position = Literal["top-left", "top-right", "bottom-left", "bottom-right", "center"]
HdrMode = Literal["auto", "keep", "tonemap"]
Offset = Annotated[int, msgspec.Meta(ge=0, le=8192)]
SubtitleMode = Literal["drop", "keep"]
#: A subtitle track by its index among the input's subtitle streams (0 is the first).
SubtitleIndex = Annotated[int, msgspec.Meta(ge=0, le=64)]

#: Profiles each codec takes; ffmpeg's names for them.
PROFILES: dict[str, frozenset[str]] = {
    "h264": frozenset({"baseline", "main", "high"}),
    "hevc": frozenset({"main", "main10"}),
}
#: Levels each codec defines (HEVC has no 4.2).
LEVELS: dict[str, frozenset[str]] = {
    "h264": frozenset(get_args(Level)),
    "hevc": frozenset(get_args(Level)) - {"4.2"},
}
#: Pixel formats the codec's encoders take (SVT-AV1 encodes 4:2:0 only).
PIX_FMTS: dict[str, frozenset[str]] = {
    "h264": frozenset(get_args(PixFmt)),
    "hevc": frozenset(get_args(PixFmt)),
    "vp9": frozenset(get_args(PixFmt)),
    "av1": frozenset({"yuv420p", "yuv420p10le"}),
}


def is_ten_bit(pix_fmt: str) -> bool:
    return pix_fmt.endswith("10le")


def chroma_420(pix_fmt: str) -> bool:
    """Hardware encoders take 4:2:0 only (NV12/P010)."""
    return pix_fmt.startswith("yuv420p")


class Crop(Part, kw_only=True):
    """A `width` x `height` window whose top-left corner is at (`x`, `y`) in the source."""

    width: Annotated[int, msgspec.Meta(ge=16, le=8192)]
    height: Annotated[int, msgspec.Meta(ge=16, le=8192)]
    x: Offset = 0
    y: Offset = 0

    def __post_init__(self) -> None:
        if self.width % 2 or self.height % 2:
            raise ValueError("crop `width` and `height` must be even (4:2:0 chroma)")


class Overlay(Part, kw_only=True):
    """A still image (PNG, JPEG or WebP; its alpha is kept) drawn over every frame."""

    image: MediaUri
    position: Position = "top-right"
    #: Pixels between the image and the picture's edges.
    margin: Annotated[int, msgspec.Meta(ge=0, le=4096)] = 16
    #: Scale the image to this width first (height follows its aspect ratio).
    width: Annotated[int, msgspec.Meta(ge=2, le=8192)] | None = None


#: Codecs that carry 10-bit HDR here (10-bit H.264 plays almost nowhere).
HDR_CODECS = ("hevc", "av1", "vp9")


def check_hdr_keep(codec: str, profile: str | None, pix_fmt: str | None) -> None:
    if codec not in HDR_CODECS:
        raise ValueError(f"`hdr` 'keep' needs a 10-bit {', '.join(HDR_CODECS)} output, not "
                         f"{codec}; ask `hdr` 'tonemap' for SDR instead")  # fmt: skip
    if (pix_fmt is not None and not is_ten_bit(pix_fmt)) or profile == "main":
        raise ValueError("`hdr` 'keep' needs 10-bit pictures: leave out `pix_fmt` (or ask a "
                         "10-bit one) and `profile` 'main'")  # fmt: skip


def check_picture(
    codec: str,
    *,
    profile: str | None,
    level: str | None,
    pix_fmt: str | None,
    gop_size: int | None,
    closed_gop: bool,
) -> None:
    """ValueError naming the first option the codec cannot honour as asked."""
    if profile is not None and profile not in PROFILES.get(codec, ()):
        takes = sorted(PROFILES.get(codec, ()))
        raise ValueError(f"`profile` {profile!r} is not one {codec} has "
                         f"({', '.join(takes) if takes else 'none are settable'})")  # fmt: skip
    if level is not None and level not in LEVELS.get(codec, ()):
        raise ValueError(f"`level` {level!r} is not settable for {codec}")
    if pix_fmt is not None:
        if pix_fmt not in PIX_FMTS[codec]:
            raise ValueError(f"`pix_fmt` {pix_fmt!r} is not one {codec} encodes")
        if profile in ("baseline", "main", "high") and pix_fmt != "yuv420p":
            raise ValueError(f"`profile` {profile!r} is 8-bit 4:2:0 only; `pix_fmt` {pix_fmt!r} "
                             "needs another profile (or none)")  # fmt: skip
        if profile == "main10" and not chroma_420(pix_fmt):
            raise ValueError(f"`profile` 'main10' is 4:2:0 only; not `pix_fmt` {pix_fmt!r}")
    if closed_gop and gop_size is None:
        raise ValueError("`closed_gop` needs `gop_size` (the keyframe interval it closes)")
