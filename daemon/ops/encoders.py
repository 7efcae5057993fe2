"""Encoder choice and encoder flags: codec → fallback chain, preset and rate control per encoder.

Every flag comes from a table keyed by validated schema values (codec, preset, rate control);
nothing from the job is passed through as text. Chain order: NVENC → QSV → VAAPI → software,
restricted to the encoders this node verified (minus withdrawn ones) and the job's `accel`.
"""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from pathlib import Path

from daemon.errors import InvalidJob
from schemas.operations import Transcode

FAMILIES = ("nvenc", "qsv", "vaapi", "software")
SOFTWARE = {
    "h264": ("libx264",),
    "hevc": ("libx265",),
    "av1": ("libsvtav1", "libaom-av1"),
    "vp9": ("libvpx-vp9",),
}
HARDWARE = {
    codec: {fam: f"{codec}_{fam}" for fam in ("nvenc", "qsv", "vaapi")} for codec in SOFTWARE
}
del HARDWARE["vp9"]["nvenc"]  # NVENC has no VP9 encoder
_CRF_NEEDS_BV0 = ("libaom-av1", "libvpx-vp9")  # their CRF needs `-b:v 0` (or a cap)

_STEPS = ("ultrafast", "veryfast", "fast", "medium", "slow", "slower", "veryslow")
_SVT = dict(zip(_STEPS, ("12", "10", "8", "6", "4", "3", "2"), strict=True))
_AOM = dict(zip(_STEPS, ("8", "7", "6", "5", "4", "3", "2"), strict=True))
_NVENC = dict(zip(_STEPS, ("p1", "p2", "p3", "p4", "p5", "p6", "p7"), strict=True))
_QSV = {**{step: step for step in _STEPS}, "ultrafast": "veryfast"}  # QSV stops at veryfast
_VPX_SPEED = ("8", "5", "4", "3", "2", "1", "0")
_VPX = {
    step: ("realtime" if i == 0 else "best" if i == 6 else "good", _VPX_SPEED[i])
    for i, step in enumerate(_STEPS)
}


def family_of(encoder: str) -> str:
    suffix = encoder.rpartition("_")[2]
    return suffix if suffix in FAMILIES else "software"


def encoder_chain(codec: str, accel: str, usable: AbstractSet[str]) -> list[str]:
    """Encoders to try in order; InvalidJob (permanent) when the node has none that may be used."""
    families = FAMILIES if accel == "auto" else ((accel,) if accel != "software" else ("software",))
    chain: list[str] = []
    for family in families:
        names = SOFTWARE[codec] if family == "software" else (HARDWARE[codec].get(family),)
        chain += [name for name in names if name is not None and name in usable]
    if not chain:
        which = "" if accel == "auto" else f"{accel} "
        raise InvalidJob(f"no verified {which}encoder for {codec} on this node")
    return chain


def preset_args(encoder: str, preset: str, *, two_pass: bool = False) -> list[str]:
    match encoder:
        case "libx264" | "libx265":
            return ["-preset", preset]
        case "libsvtav1":
            return ["-preset", _SVT[preset]]
        case "libaom-av1":
            return ["-cpu-used", _AOM[preset], "-row-mt", "1"]
        case "libvpx-vp9":
            deadline, speed = _VPX[preset]
            if two_pass and deadline == "realtime":  # libvpx two-pass needs good/best
                deadline, speed = "good", "5"
            return ["-deadline", deadline, "-cpu-used", speed, "-row-mt", "1"]
    match family_of(encoder):
        case "nvenc":
            return ["-preset", _NVENC[preset], "-tune", "hq"]
        case "qsv":
            return ["-preset", _QSV[preset]]
    return []  # VAAPI has no preset scale


def rate_args(encoder: str, op: Transcode, *, pass_no: int | None, passlog: Path) -> list[str]:
    """Rate-control flags; `pass_no` is 1 or 2 for a software two-pass run, else None."""
    crf = str(op.crf) if op.crf is not None else ""
    kbps = op.bitrate_kbps or 0
    rate, cap, buf = f"{kbps}k", f"{kbps * 2}k", f"{kbps * 2}k"
    family = family_of(encoder)
    match op.rate_control, family:
        case "crf", "nvenc":
            return ["-rc", "vbr", "-cq", crf, "-b:v", "0"]
        case "crf", "qsv":
            return ["-global_quality", crf]
        case "crf", "vaapi":
            return ["-rc_mode", "CQP", "-qp", crf]
        case "crf", _:
            return [
                "-crf",
                crf,
                *(["-b:v", "0"] if encoder in ("libaom-av1", "libvpx-vp9") else []),
            ]
        case "cbr", "nvenc":
            return ["-rc", "cbr", "-b:v", rate, "-maxrate", rate, "-bufsize", buf]
        case "cbr", "vaapi":
            return ["-rc_mode", "CBR", "-b:v", rate, "-maxrate", rate, "-bufsize", buf]
        case "cbr", _:
            low_delay = ["-svtav1-params", "pred-struct=1"] if encoder == "libsvtav1" else []
            return ["-b:v", rate, "-minrate", rate, "-maxrate", rate, "-bufsize", buf, *low_delay]
        case "capped_crf", "nvenc":
            return ["-rc", "vbr", "-cq", crf, "-b:v", "0", "-maxrate", rate, "-bufsize", buf]
        case "capped_crf", "qsv" | "vaapi":
            # No portable capped-quality mode across drivers: VBR with the cap as its ceiling.
            return [*_vaapi_rc(family, "VBR"), "-b:v", rate, "-maxrate", rate, "-bufsize", buf]
        case "capped_crf", _:
            if encoder in _CRF_NEEDS_BV0:  # their constrained-quality mode
                return ["-crf", crf, "-b:v", rate]
            return ["-crf", crf, "-maxrate", rate, "-bufsize", buf]
        case "two_pass", "software" if pass_no is not None:
            return ["-b:v", rate, "-pass", str(pass_no), "-passlogfile", str(passlog)]
        case "two_pass", "nvenc":
            return ["-rc", "vbr", "-multipass", "fullres", "-b:v", rate, "-maxrate", cap]
    # vbr everywhere, and two_pass on QSV/VAAPI (one pass: their look-ahead does the rest)
    return [*_vaapi_rc(family, "VBR"), "-b:v", rate, "-maxrate", cap, "-bufsize", buf]


def needs_two_runs(encoder: str, op: Transcode) -> bool:
    video = op.video_codec != "none"
    return video and op.rate_control == "two_pass" and family_of(encoder) == "software"


def _vaapi_rc(family: str, mode: str) -> list[str]:
    return ["-rc_mode", mode] if family == "vaapi" else []
