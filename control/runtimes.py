"""Run-time estimates learned from completed jobs: the pure maths behind deadlines.

Runs are grouped by what drives their cost (operation, video codec, output height bucket,
pool). Each group keeps two running means: wall seconds per run, and the realtime factor (media
seconds processed per wall second) of the runs whose media duration is known. A mean is the
plain average of the first `1 / ALPHA` runs and an exponentially weighted one after, so a few
runs already give an estimate and a fleet that got faster (or slower) is followed within tens
of runs. See docs/deadlines.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.jobs import JobSpec
from schemas.operations import Package, Transcode
from schemas.results import JobResult

#: Weight of a new run once a group has more than 1 / ALPHA of them.
ALPHA = 0.1
#: Output height buckets; 0 stands for "as the source" (no height asked, or not a video output).
HEIGHT_BUCKETS = (480, 720, 1080, 1440, 2160, 4320)


@dataclass(frozen=True, slots=True, order=True)
class RuntimeKey:
    operation: str
    codec: str
    height: int
    pool: str

    def describe(self) -> str:
        size = "source size" if self.height == 0 else f"<={self.height}p"
        codec = f" {self.codec}" if self.codec else ""
        return f"{self.operation}{codec} {size} on {self.pool}"


def height_bucket(height: int | None) -> int:
    """The smallest bucket that holds `height` (0 for none)."""
    if not height:
        return 0
    return next((b for b in HEIGHT_BUCKETS if height <= b), HEIGHT_BUCKETS[-1])


def runtime_key(spec: JobSpec) -> RuntimeKey:
    op = spec.operation
    codec, height = "", 0
    if isinstance(op, Transcode):
        codec, height = op.video_codec, height_bucket(op.height)
    elif isinstance(op, Package):
        top = max(op.ladder, key=lambda r: r.height)
        codec, height = top.codec, height_bucket(top.height)
    return RuntimeKey(spec.operation_name, codec, height, spec.pool)


@dataclass(frozen=True, slots=True)
class Sample:
    """One completed run: its wall seconds and, when known, the media seconds it processed."""

    wall_s: float
    media_s: float | None = None


def sample_of(result: JobResult, measured_s: float | None = None) -> Sample | None:
    """The run a result reports; `measured_s` (finish - start as recorded) when it has no wall
    time. None when there is nothing to learn from."""
    wall = result.wall_seconds or measured_s or 0.0
    if wall <= 0:
        return None
    media = result.media_seconds if result.media_seconds else None
    return Sample(wall, media)


@dataclass(frozen=True, slots=True)
class Learned:
    runs: int = 0
    wall_s: float = 0.0
    #: Runs whose media duration was known, and their mean realtime factor.
    rtf_runs: int = 0
    rtf: float = 0.0


def _mean(mean: float, n: int, x: float) -> float:
    """The running mean after its (n+1)-th value: plain average first, then an EWMA."""
    weight = max(1.0 / (n + 1), ALPHA)
    return mean + weight * (x - mean)


def learn(learned: Learned, samples: list[Sample]) -> Learned:
    out = learned
    for s in samples:
        out = replace(out, runs=out.runs + 1, wall_s=_mean(out.wall_s, out.runs, s.wall_s))
        if s.media_s:
            rtf = s.media_s / s.wall_s
            out = replace(out, rtf_runs=out.rtf_runs + 1, rtf=_mean(out.rtf, out.rtf_runs, rtf))
    return out


def media_seconds(spec: JobSpec, hint_s: float | None) -> float | None:
    """Media seconds the job will process: a transcode's trim, else the producer's hint (less
    a trim's start), else unknown."""
    op = spec.operation
    start = (op.start_seconds or 0.0) if isinstance(op, Transcode) else 0.0
    left = None if hint_s is None else max(0.0, hint_s - start)
    trim = op.duration_seconds if isinstance(op, Transcode) else None
    if trim is not None:
        return trim if left is None else min(trim, left)
    return left


@dataclass(frozen=True, slots=True)
class RunEstimate:
    seconds: float
    runs: int
    basis: str  # "realtime factor" | "wall time"


def run_estimate(learned: Learned | None, media_s: float | None) -> RunEstimate | None:
    """The job's own run time: media / realtime factor when both are known, else the group's
    mean wall time; None when no run of the group completed yet."""
    if learned is None:
        return None
    if media_s is not None and learned.rtf_runs and learned.rtf > 0:
        return RunEstimate(media_s / learned.rtf, learned.rtf_runs, "realtime factor")
    if learned.runs:
        return RunEstimate(learned.wall_s, learned.runs, "wall time")
    return None


def queue_seconds(ahead: int, run_s: float, slots: int) -> float:
    """Time until the job starts: the jobs ahead, each taken as long as this one, shared over
    the pool's live slots."""
    return ahead * run_s / max(1, slots)


def finish_at(now: float, run_s: float, ahead: int, slots: int) -> float:
    return now + queue_seconds(ahead, run_s, slots) + run_s


@dataclass(frozen=True, slots=True)
class OpenDeadline:
    """An unfinished job with a deadline, as the at-risk check reads it (epoch seconds)."""

    subject: str
    deadline: float
    state: str
    started_at: float | None = None
    estimated_run_s: float | None = None


def lateness(job: OpenDeadline, now: float) -> float | None:
    """Seconds past its deadline the job is, or will finish, when at risk; None when not.

    Passed: now - deadline. Otherwise its estimated finish (a running job from its start, a
    waiting one from now, both with the run estimate made at submit) - deadline.
    """
    if now >= job.deadline:
        return now - job.deadline
    if job.estimated_run_s is None:
        return None
    start = job.started_at if job.state == "running" and job.started_at is not None else now
    finish = max(now, start + job.estimated_run_s)
    return finish - job.deadline if finish > job.deadline else None
