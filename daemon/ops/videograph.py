"""The video filter graph of a transcode, pure: picture filters (deinterlace, crop, tone-map,
scale, frame rate, burned-in subtitles), an overlay image as a second input, colour tags, and
the encoder's pixel format (uploaded to the device for VAAPI/QSV).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.operations import Transcode
from schemas.videoopts import is_ten_bit


@dataclass(frozen=True, slots=True)
class Colour:
    """What the output's colour must say: kept HDR tags, or SDR made by tone-mapping."""

    primaries: str
    transfer: str
    matrix: str
    tonemap: bool = False


SDR = Colour("bt709", "bt709", "bt709", tonemap=True)
#: PQ/HLG to linear light, tone-mapped (hable) into BT.709 primaries, back to a BT.709 curve.
TONEMAP = (
    "zscale=t=linear:npl=100,format=gbrpf32le,zscale=p=bt709,tonemap=tonemap=hable:desat=0,"
    "zscale=t=bt709:m=bt709:r=tv"
)


def output_pix_fmt(op: Transcode, ten_bit: bool) -> str:
    """The software pixel format of the output: asked for, implied by the profile, else 4:2:0
    at the source's depth (10-bit H.264 plays almost nowhere, so H.264 stays 8-bit; tone-mapped
    SDR is 8-bit)."""
    if op.pix_fmt is not None:
        return op.pix_fmt
    if op.profile == "main10":
        return "yuv420p10le"
    if op.profile is not None:
        return "yuv420p"
    return "yuv420p10le" if ten_bit and op.video_codec != "h264" else "yuv420p"


def picture_filters(op: Transcode, colour: Colour | None, burn: str | None = None) -> list[str]:
    """Deinterlace, crop, tone-map, scale, frame rate, subtitles: in that order (crop counts
    source pixels; tone-mapping the cropped picture costs less, and scaling after it filters SDR
    values; text drawn last is sized for the output's picture)."""
    filters = []
    if op.deinterlace:
        filters.append("bwdif=mode=send_frame:parity=auto:deint=interlaced")
    if op.crop is not None:
        c = op.crop
        filters.append(f"crop={c.width}:{c.height}:{c.x}:{c.y}:exact=1")
    if colour is not None and colour.tonemap:
        filters.append(TONEMAP)
    if op.width and op.height:
        fit = "force_original_aspect_ratio=decrease:force_divisible_by=2"
        filters.append(f"scale={op.width}:{op.height}:{fit}")
    elif op.height:
        filters.append(f"scale=-2:{op.height}")  # -2: keep the aspect ratio, even width
    elif op.width:
        filters.append(f"scale={op.width}:-2")
    if op.fps:
        filters.append(f"fps={op.fps!r}")
    if burn is not None:
        filters.append(burn)
    return filters


def format_filters(op: Transcode, family: str, ten_bit: bool, colour: Colour | None) -> list[str]:
    """Tags, then the encoder's pixel format. The frames' tags are what the encoder writes:
    ffmpeg takes colour properties from the frames, so they are set here, not as options."""
    tags = []
    if colour is not None:
        tags.append(f"setparams=color_primaries={colour.primaries}:color_trc={colour.transfer}"
                    f":colorspace={colour.matrix}")  # fmt: skip
    deep = is_ten_bit(output_pix_fmt(op, ten_bit))
    match family:
        case "qsv":
            return [*tags, f"format={'p010le' if deep else 'nv12'}", "hwupload=extra_hw_frames=64"]
        case "vaapi":
            return [*tags, f"format={'p010' if deep else 'nv12'}", "hwupload"]
        case "nvenc":
            return [*tags, f"format={'p010le' if deep else 'yuv420p'}"]
    return [*tags, f"format={output_pix_fmt(op, ten_bit)}"]


def video_filters(
    op: Transcode, family: str, ten_bit: bool, colour: Colour | None, burn: str | None = None
) -> list[str]:
    return [*picture_filters(op, colour, burn), *format_filters(op, family, ten_bit, colour)]


_CORNERS = {
    "top-left": ("{m}", "{m}"),
    "top-right": ("W-w-{m}", "{m}"),
    "bottom-left": ("{m}", "H-h-{m}"),
    "bottom-right": ("W-w-{m}", "H-h-{m}"),
    "center": ("(W-w)/2", "(H-h)/2"),
}


def video_graph(
    op: Transcode, family: str, ten_bit: bool, colour: Colour | None, burn: str | None = None
) -> list[str]:
    """`-vf` for one input; with an overlay, a complex graph whose second input is the image
    (one frame, repeated to the end by overlay's default eof_action). `burn`: the filter that
    draws subtitles (daemon.ops.subtitles)."""
    if op.overlay is None:
        return [
            "-map",
            f"0:v:{op.video_stream}",
            "-vf",
            ",".join(video_filters(op, family, ten_bit, colour, burn)),
        ]
    o = op.overlay
    x, y = (part.format(m=o.margin) for part in _CORNERS[o.position])
    base = ",".join(picture_filters(op, colour, burn)) or "null"
    image = f"scale={o.width}:-1," if o.width else ""
    after = ",".join(format_filters(op, family, ten_bit, colour))
    graph = (
        f"[0:v:{op.video_stream}]{base}[base];[1:v]{image}format=rgba[mark];"
        f"[base][mark]overlay=x={x}:y={y}:format=auto,{after}[vout]"
    )
    return ["-filter_complex", graph, "-map", "[vout]"]
