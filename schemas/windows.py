"""Processing windows: when a node pulls a class of work (pool and/or priority), in its wall time.

A rule is `{pools, priorities, start, end, tz, days}`; empty `pools` or `priorities` mean all.
Every rule is checked as it is decoded (config file, API request, node command), with a message
that names what is allowed; daemon.pull.windows evaluates them.
"""

from __future__ import annotations

import re
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from schemas.common import PRIORITIES, Part, Token

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WALL = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
#: IANA names only: ZoneInfo would also read a file path.
_ZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*$")
Short = Annotated[str, msgspec.Meta(max_length=64)]


def check_zone(name: str) -> ZoneInfo:
    try:
        if not _ZONE.match(name):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA zone name such as UTC, Europe/Paris, "
            "America/New_York"
        ) from None


def _check(rule: WindowRule) -> None:
    for field, text in (("start", rule.start), ("end", rule.end)):
        if not _WALL.match(text):
            raise ValueError(f"bad {field} time {text!r}: use HH:MM from 00:00 to 23:59")
    for prio in rule.priorities:
        if prio not in PRIORITIES:
            raise ValueError(f"unknown priority {prio!r}: use {', '.join(PRIORITIES)}")
    for day in rule.days:
        if day not in WEEKDAYS:
            raise ValueError(f"unknown day {day!r}: use {', '.join(WEEKDAYS)}")
    check_zone(rule.tz)


class WindowRule(Part, kw_only=True):
    """Work of this class is pulled only while one of its windows is open. `end` at or before
    `start` ends on the next day (22:00-06:00); `start == end` is a whole day. `days`: the
    weekdays a window starts on (empty: every day)."""

    #: Pools the rule holds back (empty: every pool).
    pools: Annotated[list[Token], msgspec.Meta(max_length=64)] = []
    #: Priorities it holds back: high, normal, low (empty: all).
    priorities: Annotated[list[Short], msgspec.Meta(max_length=3)] = []
    #: Local wall time the window opens, HH:MM.
    start: Short
    #: Local wall time it closes, HH:MM (at or before `start`: the next day).
    end: Short
    #: IANA time zone of `start` and `end` (e.g. Europe/Paris).
    tz: Short = "UTC"
    #: Weekdays (mon ... sun) a window starts on; empty: every day.
    days: Annotated[list[Short], msgspec.Meta(max_length=7)] = []

    def __post_init__(self) -> None:
        _check(self)


class WindowInForce(WindowRule, kw_only=True, forbid_unknown_fields=False):
    """A rule as a node advertises it: lenient like the rest of a node record, and not checked
    again by readers (whose time zone database may be older than the node's)."""

    def __post_init__(self) -> None:
        pass


#: Most rules a node takes.
MAX_WINDOWS = 64
