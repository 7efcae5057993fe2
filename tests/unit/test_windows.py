"""Processing-window rules, evaluated with explicit instants: midnight, zones, DST, weekdays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import msgspec
import pytest

from common.configfile import ConfigError
from control.cli.nodewindows import parse_rule
from daemon.config import load_daemon_config
from daemon.pull.windows import Window, Windows
from daemon.pull.windowstore import FILENAME, load_override, save_override
from schemas.windows import WindowRule

PARIS = ZoneInfo("Europe/Paris")


def rule(**kw: object) -> WindowRule:
    return msgspec.convert(kw, WindowRule)


def paris(*args: int) -> datetime:
    return datetime(*args, tzinfo=PARIS)  # type: ignore[misc]


def test_a_window_crossing_midnight() -> None:
    night = Window.of(rule(start="22:00", end="06:00", tz="Europe/Paris"))
    assert not night.is_open(paris(2026, 6, 10, 21, 59))
    assert night.is_open(paris(2026, 6, 10, 22, 0))
    assert night.is_open(paris(2026, 6, 11, 0, 30))
    assert night.is_open(paris(2026, 6, 11, 5, 59))
    assert not night.is_open(paris(2026, 6, 11, 6, 0))  # half open: the end is out
    assert night.next_opening(paris(2026, 6, 11, 6, 0)) == paris(2026, 6, 11, 22, 0)
    day = Window.of(rule(start="08:00", end="08:00"))  # start == end: a whole day
    assert day.is_open(datetime(2026, 6, 10, 7, 59, tzinfo=UTC))


def test_the_rule_zone_decides() -> None:
    at = datetime(2026, 6, 10, 21, 30, tzinfo=UTC)  # 23:30 in Paris, 17:30 in New York
    assert Window.of(rule(start="22:00", end="06:00", tz="Europe/Paris")).is_open(at)
    assert not Window.of(rule(start="22:00", end="06:00", tz="America/New_York")).is_open(at)
    assert not Window.of(rule(start="22:00", end="06:00")).is_open(at)  # UTC by default


def test_spring_forward_day() -> None:
    # 2026-03-29 in Paris: the clock jumps from 02:00 CET to 03:00 CEST at 01:00 UTC.
    gap = Window.of(rule(start="02:30", end="05:00", tz="Europe/Paris"))
    jump = datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert not gap.is_open(jump - timedelta(seconds=1))
    assert gap.is_open(jump)  # 02:30 never shows: the window opens as the clock passes it
    assert gap.next_opening(datetime(2026, 3, 28, 12, 0, tzinfo=UTC)) == jump
    assert gap.next_opening(jump) == paris(2026, 3, 30, 2, 30)  # CEST from now on
    night = Window.of(rule(start="22:00", end="06:00", tz="Europe/Paris"))
    start = night.next_opening(datetime(2026, 3, 28, 12, 0, tzinfo=UTC))
    assert start is not None
    hours = [h for h in range(12) if night.is_open(start + timedelta(hours=h))]
    assert hours == list(range(7))  # a short night: 7 hours, not 8


def test_fall_back_day() -> None:
    # 2026-10-25 in Paris: 03:00 CEST goes back to 02:00 CET at 01:00 UTC.
    late = Window.of(rule(start="22:00", end="02:30", tz="Europe/Paris"))
    first_0230 = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert late.is_open(first_0230 - timedelta(seconds=1))
    assert not late.is_open(first_0230)
    # The clock reads 02:00-02:30 again (CET): the window does not open a second time.
    assert not late.is_open(datetime(2026, 10, 25, 1, 15, tzinfo=UTC))
    night = Window.of(rule(start="22:00", end="06:00", tz="Europe/Paris"))
    start = night.next_opening(datetime(2026, 10, 24, 12, 0, tzinfo=UTC))
    assert start is not None
    hours = [h for h in range(12) if night.is_open(start + timedelta(hours=h))]
    assert hours == list(range(9))  # a long night: 9 hours


def test_days_name_the_day_a_window_starts() -> None:
    friday = Window.of(rule(start="22:00", end="06:00", tz="Europe/Paris", days=["fri"]))
    assert paris(2026, 6, 12).weekday() == 4  # a Friday
    assert friday.is_open(paris(2026, 6, 12, 23, 0))
    assert friday.is_open(paris(2026, 6, 13, 5, 0))  # Saturday morning: Friday's window
    assert not friday.is_open(paris(2026, 6, 13, 23, 0))
    assert not friday.is_open(paris(2026, 6, 11, 23, 0))
    assert friday.next_opening(paris(2026, 6, 13, 23, 0)) == paris(2026, 6, 19, 22, 0)


def test_classes_rules_cover() -> None:
    windows = Windows(
        [
            rule(pools=["cpu"], priorities=["low"], start="22:00", end="06:00"),
            rule(pools=["cpu"], priorities=["low"], start="12:00", end="13:00"),
            rule(priorities=["normal"], start="01:00", end="02:00"),
        ]
    )
    noon = datetime(2026, 6, 10, 12, 30, tzinfo=UTC)
    evening = datetime(2026, 6, 10, 18, 0, tzinfo=UTC)
    assert windows.open_tiers("cpu", noon) == ["high", "low"]  # either window of low will do
    assert windows.open_tiers("cpu", evening) == ["high"]
    assert windows.open_tiers("nvenc", evening) == ["high", "low"]  # no rule names nvenc/low
    # The first closed class to open: low at 22:00 before normal at 01:00.
    got = windows.next_opening("cpu", ["normal", "low"], evening)
    assert got == datetime(2026, 6, 10, 22, 0, tzinfo=UTC)
    assert Windows().open_tiers("cpu", evening) == ["high", "normal", "low"]
    assert Windows().next_opening("cpu", ["low"], evening) is None


@pytest.mark.parametrize(
    ("fields", "allowed"),
    [
        ({"start": "24:00", "end": "06:00"}, "HH:MM from 00:00 to 23:59"),
        ({"start": "22:00", "end": "6:00"}, "HH:MM from 00:00 to 23:59"),
        ({"start": "22:00", "end": "06:00", "tz": "Europe/Atlantis"}, "IANA zone name"),
        ({"start": "22:00", "end": "06:00", "tz": "../../etc/passwd"}, "IANA zone name"),
        ({"start": "22:00", "end": "06:00", "priorities": ["urgent"]}, "high, normal, low"),
        ({"start": "22:00", "end": "06:00", "days": ["monday"]}, "mon, tue, wed"),
    ],
)
def test_bad_rules_name_what_is_allowed(fields: dict[str, object], allowed: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=allowed):
        msgspec.convert(fields, WindowRule)


def test_bad_config_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "daemon.toml"
    path.write_text(
        'aging_every = 4\n[[windows]]\npools = ["cpu"]\npriorities = ["low"]\n'
        'start = "22:00"\nend = "06:00"\ntz = "Europe/Paris"\ndays = ["sat", "sun"]\n'
    )
    cfg = load_daemon_config(path)
    assert cfg.aging_every == 4 and cfg.windows[0].days == ["sat", "sun"]
    for bad, allowed in [
        ('tz = "Paris"', "IANA zone name"),
        ('priorities = ["lowest"]', "high, normal, low"),
        ('start = "10pm"', "HH:MM"),
        ("when = 1", "unknown key"),
    ]:
        key = bad.split(" ")[0]
        lines = [ln for ln in path.read_text().splitlines() if not ln.startswith(key + " ")]
        (tmp_path / "bad.toml").write_text("\n".join([*lines, bad]) + "\n")
        with pytest.raises(ConfigError, match=allowed):
            load_daemon_config(tmp_path / "bad.toml")
    (tmp_path / "neg.toml").write_text("aging_every = -1\n")
    with pytest.raises(ConfigError, match="aging_every"):
        load_daemon_config(tmp_path / "neg.toml")


async def test_the_override_file(tmp_path: Path) -> None:
    assert await load_override(tmp_path) is None
    rules = [rule(priorities=["low"], start="22:00", end="06:00", tz="Europe/Paris")]
    await save_override(tmp_path, rules)
    assert await load_override(tmp_path) == rules
    await save_override(tmp_path, [])
    assert await load_override(tmp_path) == []  # no windows, set at run time
    await save_override(tmp_path, None)
    assert await load_override(tmp_path) is None and not (tmp_path / FILENAME).exists()
    (tmp_path / FILENAME).write_text('{"v": 1, "rules": [{"start": "99:00", "end": "01:00"}]}')
    assert await load_override(tmp_path) is None  # does not load: the config's apply


def test_cli_rule_syntax() -> None:
    got = parse_rule("pools=cpu,batch priorities=low start=22:00; end=06:00 tz=Europe/Paris")
    assert got == rule(
        pools=["cpu", "batch"], priorities=["low"], start="22:00", end="06:00", tz="Europe/Paris"
    )
    with pytest.raises(ValueError, match="keys"):
        parse_rule("from=22:00 end=06:00")
    with pytest.raises(ValueError, match="mon, tue"):
        parse_rule("start=22:00 end=06:00 days=funday")
