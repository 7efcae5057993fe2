"""The per-title ladder's decisions, pure: where the samples go, which CRF to probe next, which
CRF wins, and which rungs the convex hull keeps.

CRF search: quality falls (roughly monotonically) as CRF rises, and the search wants the highest
CRF whose quality still reaches the target. CRFs are probed on a grid of `RESOLUTION` (x264 and
x265 take fractional CRF: on busy content one whole CRF moves VMAF by 2-3 points). The search
keeps the highest passing and the lowest failing CRF probed so far; with both known it
interpolates linearly between them on quality (regula falsi), kept at least a quarter of the
bracket from either end so every probe shrinks it by a quarter or more; with one side known it
steps away by the slope of the last two probes (or `STEP` CRF) towards the target. It stops when
the bracket is one grid step wide, a bound is reached from the passing/failing side, or the probes
are spent; the answer is the highest passing CRF probed (never an unprobed guess), or the
best-quality probe (normally the lowest bound) when nothing passed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

#: CRF step of a one-sided search before two probes give a slope.
STEP = 6.0
#: The CRF grid probes fall on.
RESOLUTION = 0.5
_EPS = 1e-9
_SCENE = re.compile(r"pts_time:([0-9.]+)\s*\n\s*lavfi\.scene_score=([0-9.]+)")

Probe = tuple[float, float]  # (crf, quality)


def parse_scene_scores(text: str) -> list[tuple[float, float]]:
    """(time, scene score) pairs from the `metadata=print` log of `lavfi.scene_score`."""
    return [(float(t), float(s)) for t, s in _SCENE.findall(text)]


def pick_samples(
    scores: Sequence[tuple[float, float]], duration: float, count: int, seconds: float
) -> list[float]:
    """Start times of `count` samples `seconds` long: the title is cut into `count` equal
    windows and each sample starts where its window's `seconds` hold the most scene change
    (the sum of scene scores: motion and cuts, what costs bits), the window's start on a tie;
    samples never overlap and never run past the end.
    A title shorter than all samples together yields one sample from 0 (the whole title)."""
    if duration <= 0 or count * seconds >= duration:
        return [0.0]
    window = duration / count
    starts = []
    for i in range(count):
        lo = i * window
        hi = min(lo + window - seconds, duration - seconds)  # each sample within its window
        candidates = [lo] + [t for t, _ in scores if lo < t <= hi]
        best = max(candidates, key=lambda c: (_busy(scores, c, seconds), -c))
        starts.append(round(best, 3))
    return starts


def _busy(scores: Sequence[tuple[float, float]], start: float, seconds: float) -> float:
    return sum(s for t, s in scores if start <= t < start + seconds)


@dataclass(frozen=True, slots=True)
class Bracket:
    """What the probes so far say: highest passing CRF and lowest failing CRF (None: none)."""

    passing: Probe | None
    failing: Probe | None


def bracket(probes: Sequence[Probe], target: float) -> Bracket:
    passing = [p for p in probes if p[1] >= target]
    failing = [p for p in probes if p[1] < target]
    return Bracket(
        max(passing, default=None, key=lambda p: p[0]),
        min(failing, default=None, key=lambda p: p[0]),
    )


def next_crf(
    probes: Sequence[Probe], target: float, lo: float, hi: float, start: float, max_probes: int
) -> float | None:
    """The next CRF to probe, or None when the search is done."""
    if not probes:
        return _grid(min(max(start, lo), hi))
    if len(probes) >= max_probes:
        return None
    b = bracket(probes, target)
    if b.passing is not None and b.failing is not None:
        (pc, pq), (fc, fq) = b.passing, b.failing
        width = fc - pc
        if width <= RESOLUTION + _EPS:
            return None
        guess = pc + (pq - target) * width / (pq - fq) if pq > fq else pc + width / 2
        margin = max(RESOLUTION, width / 4)
        crf = _grid(min(max(guess, pc + margin), fc - margin))
        crf = min(max(crf, pc + RESOLUTION), fc - RESOLUTION)  # the grid may round onto an end
    elif b.passing is not None:  # everything passed: go cheaper
        if b.passing[0] >= hi - _EPS:
            return None
        crf = min(_grid(b.passing[0] + _step(probes, target, b.passing)), hi)
    else:  # everything failed: go better
        assert b.failing is not None
        if b.failing[0] <= lo + _EPS:
            return None
        crf = max(_grid(b.failing[0] - _step(probes, target, b.failing)), lo)
    return None if any(abs(crf - c) < _EPS for c, _ in probes) else crf


def _grid(crf: float) -> float:
    return round(crf / RESOLUTION) * RESOLUTION


def _step(probes: Sequence[Probe], target: float, edge: Probe) -> float:
    """CRF distance from `edge` to where the target should be, by the slope of the last two
    probes (quality per CRF), one grid step past it; at least one grid step, at most 2 x STEP;
    STEP without a usable slope."""
    if len(probes) >= 2:
        (c1, q1), (c2, q2) = probes[-2], probes[-1]
        if c1 != c2 and (q2 - q1) / (c2 - c1) < 0:
            slope = (q2 - q1) / (c2 - c1)
            return min(abs((edge[1] - target) / slope) + RESOLUTION, 2 * STEP)
    return STEP


def choose_crf(probes: Sequence[Probe], target: float, lo: float) -> tuple[float, float, bool]:
    """(crf, its quality on the samples, whether it reached the target): the highest passing
    CRF probed; else the best-quality probe (the lowest CRF, normally `lo`)."""
    b = bracket(probes, target)
    if b.passing is not None:
        return b.passing[0], b.passing[1], True
    best = max(probes, key=lambda p: (p[1], -p[0]))
    return best[0], best[1], False


@dataclass(frozen=True, slots=True)
class HullPoint:
    key: int  # the rung's height
    kbps: float
    quality: float  # at the common display resolution


def convex_hull(points: Sequence[HullPoint]) -> list[int]:
    """Keys of the rungs on the upper convex hull of quality over bitrate: a rung that costs
    more bits than another but adds no quality is dropped, and so is one under the line between
    its neighbours (a mix of those two would serve better). The cheapest rung always stays."""
    ordered = sorted(points, key=lambda p: (p.kbps, -p.quality))
    rising: list[HullPoint] = []
    for p in ordered:
        if rising and p.quality <= rising[-1].quality:
            continue  # no quality over a cheaper rung
        if rising and p.kbps == rising[-1].kbps:
            rising.pop()  # same cost, better quality: keep the better one
        rising.append(p)
    hull: list[HullPoint] = []
    for p in rising:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()  # the middle point lies on or under the chord
        hull.append(p)
    return [p.key for p in hull]


def _cross(a: HullPoint, b: HullPoint, c: HullPoint) -> float:
    """> 0 when b lies under the chord a-c (a left turn), 0 on it."""
    return (b.kbps - a.kbps) * (c.quality - a.quality) - (b.quality - a.quality) * (c.kbps - a.kbps)
