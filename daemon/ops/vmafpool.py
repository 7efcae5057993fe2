"""VMAF pooling: per-frame scores from libvmaf's JSON log to mean, min, harmonic mean, percentiles.

The harmonic mean is libvmaf's own (n / sum(1 / (1 + x)) - 1, robust to zero scores); percentiles
interpolate linearly between ranks, like numpy's default.
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec

from daemon.errors import JobError
from schemas.results import VmafScores


class _Frame(msgspec.Struct):
    metrics: dict[str, float]


class _VmafLog(msgspec.Struct):
    frames: list[_Frame]


def read_vmaf_log(path: Path) -> list[float]:
    try:
        log = msgspec.json.decode(path.read_bytes(), type=_VmafLog)
    except (OSError, msgspec.DecodeError) as exc:
        raise JobError(f"cannot read libvmaf's log: {exc}") from exc
    scores = [f.metrics["vmaf"] for f in log.frames if "vmaf" in f.metrics]
    if not scores:
        raise JobError("libvmaf's log holds no per-frame scores")
    return scores


def vmaf_scores(scores: list[float], model: str) -> VmafScores:
    ordered = sorted(scores)
    harmonic = len(scores) / sum(1.0 / (1.0 + x) for x in scores) - 1.0
    return VmafScores(
        mean=sum(scores) / len(scores),
        min=ordered[0],
        harmonic_mean=harmonic,
        p1=percentile(ordered, 1),
        p5=percentile(ordered, 5),
        p50=percentile(ordered, 50),
        model=model,
    )


def percentile(ordered: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default) over sorted values."""
    pos = (len(ordered) - 1) * p / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
