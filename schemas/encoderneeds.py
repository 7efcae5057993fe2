"""Which encoders a job needs, by codec and hardware family: the one routing rule that both the
submit-time fit (control) and the node's own check (daemon) apply, so that a job naming a codec
a node's hardware cannot encode (AV1 on an NVENC that only does H.264/HEVC) is handed on to a
node that can, instead of failing there.
"""

from __future__ import annotations

from schemas.jobs import HW_POOLS, JobSpec
from schemas.operations import Package, PerTitle, Transcode
from schemas.videoopts import chroma_420

#: Software encoders per video codec, in preference order.
SOFTWARE: dict[str, tuple[str, ...]] = {
    "h264": ("libx264",),
    "hevc": ("libx265",),
    "av1": ("libsvtav1", "libaom-av1", "librav1e"),
    "vp9": ("libvpx-vp9",),
}
#: Codecs each hardware family has an ffmpeg encoder for (NVENC has no VP9 encoder).
HW_CODECS: dict[str, tuple[str, ...]] = {
    "nvenc": ("h264", "hevc", "av1"),
    "qsv": ("h264", "hevc", "av1", "vp9"),
    "vaapi": ("h264", "hevc", "av1", "vp9"),
}
AUDIO: dict[str, str] = {"aac": "aac", "opus": "libopus", "mp3": "libmp3lame"}
#: Families a package ladder can be encoded with (one decode, scaled on the GPU, per rung).
PACKAGE_HW = ("nvenc",)

Need = tuple[str, tuple[str, ...]]


def hw_encoders(codec: str, families: tuple[str, ...] = HW_POOLS) -> tuple[str, ...]:
    return tuple(f"{codec}_{fam}" for fam in families if codec in HW_CODECS[fam])


def video_encoders(codec: str, accel: str, *, software_only: bool = False) -> tuple[str, ...]:
    """Encoders any one of which may encode `codec` under `accel`."""
    if accel in HW_POOLS:
        return hw_encoders(codec, (accel,))
    if accel == "software" or software_only:
        return SOFTWARE[codec]
    return SOFTWARE[codec] + hw_encoders(codec)


def package_family(spec: JobSpec) -> str | None:
    """The hardware family a package ladder asks for: `accel`, or an `nvenc` pool under auto."""
    accel = spec.requirements.accel
    if accel in PACKAGE_HW:
        return accel
    if accel == "auto" and spec.pool in PACKAGE_HW:
        return spec.pool
    return None


def package_encoders(codec: str, spec: JobSpec) -> tuple[str, ...]:
    accel = spec.requirements.accel
    if accel in PACKAGE_HW:
        return hw_encoders(codec, (accel,))
    if accel == "auto":
        return SOFTWARE[codec][:1] + hw_encoders(codec, PACKAGE_HW)
    return SOFTWARE[codec][:1]  # software, and qsv/vaapi (no hardware ladder for them yet)


def encoder_needs(spec: JobSpec) -> list[Need]:
    """(what, encoders any one of which serves it) for every encoder the job needs; each entry
    must be met by the node. Jobs without an encoder (probe, analyze, thumbnail) need none."""
    op = spec.operation
    needs: list[Need] = []
    if isinstance(op, Transcode):
        codec = op.video_codec
        if codec != "none":
            soft_only = op.pix_fmt is not None and not chroma_420(op.pix_fmt)
            accel = spec.requirements.accel
            needs.append((codec, video_encoders(codec, accel, software_only=soft_only)))
        elif op.audio_stream is not None and op.settled_audio in AUDIO:  # audio only
            needs.append((op.settled_audio, (AUDIO[op.settled_audio],)))
    elif isinstance(op, Package):
        for codec in dict.fromkeys(r.codec for r in op.ladder):
            needs.append((codec, package_encoders(codec, spec)))
    elif isinstance(op, PerTitle):  # software only: the CRF search is x264's/x265's CRF
        needs.append((op.codec, SOFTWARE[op.codec][:1]))
        if op.codec != "h264":
            needs.append(("the lossless sample reel", SOFTWARE["h264"][:1]))
    return needs


#: ffmpeg filters a job may need beyond encoders: `subtitles` (libass) burns text in.
BURN_IN_FILTER = "subtitles"


def filter_needs(spec: JobSpec) -> list[Need]:
    """(what, filters any one of which serves it) for every filter the job needs from the
    node's ffmpeg build; builds without libass lack the one that burns subtitles in."""
    op = spec.operation
    if isinstance(op, Transcode) and op.burn_subtitles is not None:
        return [("burning subtitles in", (BURN_IN_FILTER,))]
    return []


def unmet_filter(spec: JobSpec, filters: set[str] | frozenset[str]) -> str | None:
    for what, wanted in filter_needs(spec):
        if not filters.intersection(wanted):
            return f"{what} needs ffmpeg's {' or '.join(wanted)} filter (libass) working here"
    return None


def unmet_need(spec: JobSpec, usable: set[str] | frozenset[str]) -> str | None:
    """The first need none of `usable` meets, in words; None when every need is met."""
    for what, encoders in encoder_needs(spec):
        if not usable.intersection(encoders):
            return f"no verified encoder for {what} (needs one of {', '.join(encoders)})"
    return None
