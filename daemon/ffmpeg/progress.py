"""Parse ffmpeg's `-progress pipe:1` key=value blocks into updates; throttle how often they go out.

A block is a run of `key=value` lines closed by `progress=continue` or `progress=end`. Values can
be `N/A` (nothing known yet) and the first blocks may carry negative times; both become None.
`out_time_ms` is, despite its name, in microseconds (a long-standing ffmpeg quirk), like
`out_time_us`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    frame: int | None = None
    fps: float | None = None
    out_time_s: float | None = None
    speed: float | None = None
    #: Share of the input's duration done, 0..100; None when the duration is unknown.
    percent: float | None = None
    #: True for ffmpeg's last block (`progress=end`).
    ended: bool = False

    def with_percent(self, percent: float | None) -> ProgressUpdate:
        return replace(self, percent=percent)


#: The input's duration in seconds, None when unknown, or a callable that tells it when asked.
Duration = float | None | Callable[[], float | None]


class ProgressParser:
    """Feed stdout lines; each completed block comes back as one ProgressUpdate."""

    def __init__(self, duration_s: Duration, span: tuple[float, float] = (0.0, 100.0)) -> None:
        #: A callable: the duration is learnt during the run (an encode started beside its probe).
        self._duration = duration_s
        #: Several ffmpeg runs (two-pass) share one 0..100 scale: this run covers `span`.
        self._span = span
        self._block: dict[str, str] = {}

    def feed(self, line: str) -> ProgressUpdate | None:
        key, sep, value = line.strip().partition("=")
        if not sep:
            return None
        if key != "progress":
            self._block[key.strip()] = value.strip()
            return None
        block, self._block = self._block, {}
        out_time = _out_time(block)
        return ProgressUpdate(
            frame=_int(block.get("frame")),
            fps=_float(block.get("fps")),
            out_time_s=out_time,
            speed=_float(block.get("speed", "").removesuffix("x")),
            percent=self.percent(out_time),
            ended=value.strip() == "end",
        )

    def percent(self, out_time_s: float | None) -> float | None:
        duration = self._duration() if callable(self._duration) else self._duration
        if duration is None or duration <= 0 or out_time_s is None:
            return None
        share = min(1.0, max(0.0, out_time_s / duration))
        low, high = self._span
        return round(low + (high - low) * share, 2)


class Throttle(Generic[T]):
    """Let an item through at most once per `interval`; keep the latest held one for `flush`."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self._pending: T | None = None

    def offer(self, item: T) -> T | None:
        now = self._clock()
        if self._last is None or now - self._last >= self._interval:
            self._last = now
            self._pending = None
            return item
        self._pending = item
        return None

    def flush(self) -> T | None:
        """The last item that was held back (so the final state is never lost), once."""
        item, self._pending = self._pending, None
        return item


def _out_time(block: dict[str, str]) -> float | None:
    for key in ("out_time_us", "out_time_ms"):
        micros = _int(block.get(key))
        if micros is not None:
            return micros / 1_000_000
    return _clock_seconds(block.get("out_time"))


def _clock_seconds(text: str | None) -> float | None:
    if not text or text.startswith("-"):
        return None
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text else None
    except ValueError:
        return None
    # float("nan") parses; NaN and infinities are not progress.
    if value is None or value != value or value in (float("inf"), float("-inf")) or value < 0:
        return None
    return value
