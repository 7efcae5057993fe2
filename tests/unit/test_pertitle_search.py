"""The per-title ladder's pure decisions: sample placement, the CRF search, the convex hull."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable

import pytest

from daemon.ops.pertitle.search import (
    RESOLUTION,
    HullPoint,
    Probe,
    choose_crf,
    convex_hull,
    next_crf,
    parse_scene_scores,
    pick_samples,
)

Curve = Callable[[float], float]


Outcome = tuple[list[Probe], tuple[float, float, bool]]


def _search(curve: Curve, target: float, lo: int = 16, hi: int = 40,
            start: float = 23, max_probes: int = 6) -> Outcome:  # fmt: skip
    probes: list[Probe] = []
    while (crf := next_crf(probes, target, lo, hi, start, max_probes)) is not None:
        assert lo <= crf <= hi and crf not in [c for c, _ in probes]
        probes.append((crf, curve(crf)))
    assert 1 <= len(probes) <= max_probes
    return probes, choose_crf(probes, target, lo)


def _truth(curve: Curve, target: float, lo: int, hi: int) -> float:
    """The highest CRF on the search's grid that reaches the target (an exhaustive scan)."""
    grid = [lo + i * RESOLUTION for i in range(round((hi - lo) / RESOLUTION) + 1)]
    return max((c for c in grid if curve(c) >= target), default=lo)


CURVES: dict[str, Curve] = {
    "linear": lambda c: 110.0 - 0.9 * c,
    "steep": lambda c: 130.0 - 2.1 * c,
    # VMAF-like: flat near the top, falling ever faster at high CRF.
    "knee": lambda c: 100.0 - 0.02 * (c - 5) ** 2,
    "logistic": lambda c: 100.0 / (1 + math.exp((c - 34) / 4)),
}


@pytest.mark.parametrize("name", CURVES)
@pytest.mark.parametrize("target", [70.0, 80.0, 88.0, 93.0, 95.5])
def test_search_finds_the_highest_passing_crf(name: str, target: float) -> None:
    curve = CURVES[name]
    truth = _truth(curve, target, 16, 40)
    probes, (crf, quality, reached) = _search(curve, target)
    if curve(16) < target:
        assert (crf, reached) == (16, False)
        return
    assert reached and quality >= target and quality == curve(crf)
    assert crf % RESOLUTION == 0
    # Within one grid step of the exhaustive answer, in at most six encodes.
    assert truth - RESOLUTION <= crf <= truth, probes


def test_everything_passing_ends_at_the_highest_crf() -> None:
    probes, (crf, _, reached) = _search(lambda c: 99.0, 50.0)
    assert (crf, reached) == (40, True)
    assert probes[-1][0] == 40


def test_nothing_passing_ends_at_the_lowest_crf_unreached() -> None:
    probes, (crf, quality, reached) = _search(lambda c: 60.0 - c, 93.0)
    assert (crf, quality, reached) == (16, 44.0, False)
    assert probes[-1][0] == 16


def test_a_noisy_curve_still_answers_a_probed_passing_crf() -> None:
    rng = random.Random(7)
    for _ in range(200):
        noise = {c: rng.uniform(-1.5, 1.5) for c in range(0, 104)}
        target = rng.uniform(80, 96)

        def curve(c: float, noise: dict[int, float] = noise) -> float:
            return 110 - 0.8 * c + noise[round(c / RESOLUTION)]

        probes, (crf, quality, reached) = _search(curve, target)
        assert (crf, quality) in probes
        if reached:
            assert quality >= target
            assert all(c <= crf for c, q in probes if q >= target)


def test_the_probe_budget_is_respected() -> None:
    probes, _ = _search(CURVES["logistic"], 93.0, lo=0, hi=51, start=23, max_probes=2)
    assert len(probes) == 2


def test_choose_prefers_best_quality_when_none_pass() -> None:
    assert choose_crf([(30, 80.0), (20, 85.0)], 90.0, 20) == (20, 85.0, False)
    assert choose_crf([(30, 91.0), (34, 90.5), (32, 89.0)], 90.0, 16) == (34, 90.5, True)


def test_hull_drops_a_costlier_rung_without_more_quality() -> None:
    points = [HullPoint(360, 500, 80.0), HullPoint(480, 900, 79.0), HullPoint(720, 1500, 93.0)]
    assert convex_hull(points) == [360, 720]


def test_hull_drops_a_rung_under_the_chord_of_its_neighbours() -> None:
    # 480p at 1000 kbps gives 82: the line from 360p to 720p passes 86.5 there.
    points = [HullPoint(720, 2000, 93.0), HullPoint(480, 1000, 82.0), HullPoint(360, 500, 83.0)]
    assert convex_hull(points) == [360, 720]
    points[2] = HullPoint(360, 500, 70.0)
    assert convex_hull(points) == [360, 480, 720]  # now concave: every rung adds quality


def test_hull_keeps_a_lone_rung_and_the_better_of_equal_cost() -> None:
    assert convex_hull([HullPoint(720, 100, 50.0)]) == [720]
    assert convex_hull([HullPoint(720, 100, 90.0), HullPoint(480, 100, 80.0)]) == [720]


def test_samples_on_a_still_title_start_at_their_windows() -> None:
    assert pick_samples([], 30.0, 3, 2.0) == [0.0, 10.0, 20.0]
    flat = [(i / 25, 0.0) for i in range(750)]
    assert pick_samples(flat, 30.0, 3, 2.0) == [0.0, 10.0, 20.0]


def test_samples_go_to_the_busiest_spot_of_each_window() -> None:
    scores = [(i / 25, 0.0) for i in range(750)]
    scores[int(4.2 * 25)] = (4.2, 0.9)  # a cut at 4.2 s
    scores[int(27.5 * 25)] = (27.5, 0.8)  # a cut near the end: the sample must still fit
    starts = pick_samples(scores, 30.0, 3, 2.0)
    assert starts[0] <= 4.2 < starts[0] + 2.0 and starts[1] == 10.0  # each cut is sampled
    assert starts[2] <= 27.5 < starts[2] + 2.0 and starts[2] + 2.0 <= 30.0


def test_samples_never_overlap_nor_run_past_the_end() -> None:
    rng = random.Random(3)
    for _ in range(200):
        duration = rng.uniform(5, 120)
        count, seconds = rng.randint(1, 6), rng.uniform(0.5, 4)
        scores = [(rng.uniform(0, duration), rng.random()) for _ in range(100)]
        starts = pick_samples(scores, duration, count, seconds)
        if count * seconds >= duration:
            assert starts == [0.0]
            continue
        assert len(starts) == count and starts == sorted(starts)
        assert all(s >= 0 and s + seconds <= duration + 1e-3 for s in starts)
        assert all(b - a >= seconds - 1e-3 for a, b in itertools.pairwise(starts))


def test_a_title_shorter_than_the_samples_is_one_sample() -> None:
    assert pick_samples([(0.5, 0.3)], 3.0, 2, 2.0) == [0.0]


def test_scene_scores_are_read_from_the_metadata_log() -> None:
    text = ("frame:0    pts:0       pts_time:0\nlavfi.scene_score=0.000000\n"
            "frame:1    pts:512     pts_time:0.04\nlavfi.scene_score=0.167419\n")  # fmt: skip
    assert parse_scene_scores(text) == [(0.0, 0.0), (0.04, 0.167419)]
