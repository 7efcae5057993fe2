"""Processing windows, evaluated: is a (pool, priority) class open now, and when does it open next.

Pure (no I/O, no event loop): the clock is the caller's. A class no rule names is always open; a
class some rules name is open while one of them is. A window is the half-open interval from the
instant the zone's wall clock first reads `start` on one of its days to the instant it first reads
`end` (the next day when `end <= start`). Instants, not wall times, are compared, so DST is safe:
a start in the spring-forward gap opens when the clock jumps past it, and a start or end in the
repeated autumn hour is its first reading, so no window opens twice in one night.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from schemas.common import PRIORITIES
from schemas.windows import WEEKDAYS, WindowRule, check_zone

#: Days looked ahead for the next opening (a window on one weekday opens within a week).
_HORIZON_DAYS = 8


def _instant(day: date, at: time, tz: ZoneInfo) -> datetime:
    """The first instant (UTC) at which the wall clock of `tz` reads `at` or later on `day`."""
    wall = datetime.combine(day, at)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)  # fold=0: the earlier reading
    if first.astimezone(tz).replace(tzinfo=None) == wall:
        return first
    # In a spring-forward gap: the clock jumps past `wall` at the transition, found to the second
    # between a reading before the gap and one after it.
    lo, hi = wall.replace(tzinfo=tz, fold=1).astimezone(UTC), first
    while hi - lo > timedelta(seconds=1):
        mid = lo + timedelta(seconds=(hi - lo).total_seconds() // 2)
        if mid.astimezone(tz).replace(tzinfo=None) < wall:
            lo = mid
        else:
            hi = mid
    return hi


def _wall(text: str) -> time:
    hh, mm = text.split(":")
    return time(int(hh), int(mm))


@dataclass(frozen=True)
class Window:
    """One rule (checked as it was decoded: schemas.windows), compiled."""

    pools: frozenset[str]
    priorities: frozenset[str]
    start: time
    end: time
    tz: ZoneInfo
    days: frozenset[int]  # date.weekday() numbers; empty: every day

    @classmethod
    def of(cls, rule: WindowRule) -> Window:
        return cls(
            pools=frozenset(rule.pools),
            priorities=frozenset(rule.priorities),
            start=_wall(rule.start),
            end=_wall(rule.end),
            tz=check_zone(rule.tz),
            days=frozenset(WEEKDAYS.index(d) for d in rule.days),
        )

    def covers(self, pool: str, priority: str) -> bool:
        return (not self.pools or pool in self.pools) and (
            not self.priorities or priority in self.priorities
        )

    def _span(self, day: date) -> tuple[datetime, datetime] | None:
        if self.days and day.weekday() not in self.days:
            return None
        end_day = day + timedelta(days=1) if self.end <= self.start else day
        return _instant(day, self.start, self.tz), _instant(end_day, self.end, self.tz)

    def is_open(self, now: datetime) -> bool:
        today = now.astimezone(self.tz).date()
        # A window ends at most the day after it starts: it started today or yesterday.
        for day in (today - timedelta(days=1), today):
            span = self._span(day)
            if span is not None and span[0] <= now < span[1]:
                return True
        return False

    def next_opening(self, now: datetime) -> datetime | None:
        """The first opening after `now`."""
        today = now.astimezone(self.tz).date()
        for n in range(_HORIZON_DAYS):
            span = self._span(today + timedelta(days=n))
            if span is not None and span[0] > now:
                return span[0]
        return None


class Windows:
    """The rules in force on a node (immutable: a change builds a new one)."""

    def __init__(self, rules: Sequence[WindowRule] = ()) -> None:
        self.rules = list(rules)
        self._windows = [Window.of(r) for r in self.rules]

    def __bool__(self) -> bool:
        return bool(self._windows)

    def _covering(self, pool: str, priority: str) -> list[Window]:
        return [w for w in self._windows if w.covers(pool, priority)]

    def is_open(self, pool: str, priority: str, now: datetime) -> bool:
        covering = self._covering(pool, priority)
        return not covering or any(w.is_open(now) for w in covering)

    def open_tiers(self, pool: str, now: datetime) -> list[str]:
        return [p for p in PRIORITIES if self.is_open(pool, p, now)]

    def next_opening(self, pool: str, priorities: Iterable[str], now: datetime) -> datetime | None:
        """When the first of these (closed) classes opens; None: none of them will this week."""
        found = [
            t
            for prio in priorities
            for w in self._covering(pool, prio)
            if (t := w.next_opening(now)) is not None
        ]
        return min(found, default=None)
