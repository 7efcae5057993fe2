"""Log lines: on stderr (never stdout), at the level asked, with `<N>` syslog priorities when
stderr is the journal stream systemd names in JOURNAL_STREAM."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.logs import env_level, journal_stream, parse_level, setup_logging, syslog_priority


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _journal_env(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def test_logs_go_to_stderr_not_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(True, logging.INFO)
    logging.getLogger("flotilla.test").info("hello", extra={"job_id": "j1"})
    out, err = capsys.readouterr()
    assert out == ""
    line = json.loads(err)
    assert line["msg"] == "hello" and line["level"] == "info" and line["job_id"] == "j1"


def test_the_level_filters(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(False, logging.WARNING)
    log = logging.getLogger("flotilla.test")
    log.info("quiet")
    log.warning("loud")
    err = capsys.readouterr().err
    assert "loud" in err and "quiet" not in err


def test_journal_lines_carry_syslog_priorities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    path.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_env(path))
    with path.open("w") as stream:
        setup_logging(None, logging.DEBUG, stream=stream)
        log = logging.getLogger("flotilla.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.critical("c", exc_info=True)
    lines = path.read_text().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    # Under systemd the lines are JSON, one per record: a traceback stays inside its record.
    assert json.loads(lines[-1][3:])["exc"].startswith("Traceback")


def test_no_prefix_when_stderr_is_not_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    other.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _journal_env(other))  # inherited, stderr redirected
    path = tmp_path / "log"
    with path.open("w") as stream:
        assert not journal_stream(stream)
        setup_logging(True, logging.INFO, stream=stream)
        logging.getLogger("flotilla.test").error("e")
    assert path.read_text().startswith("{")


def test_priorities_follow_python_levels() -> None:
    assert [syslog_priority(n) for n in (5, 10, 20, 25, 30, 40, 50)] == [7, 7, 6, 6, 4, 3, 2]


def test_level_names(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_level("DEBUG", "--log-level") == logging.DEBUG
    with pytest.raises(ValueError, match="--log-level 'loud': choose one of debug, info"):
        parse_level("loud", "--log-level")
    monkeypatch.setenv("FLOTILLA_LOG_LEVEL", "warning")
    assert env_level(logging.ERROR) == logging.WARNING
    monkeypatch.setenv("FLOTILLA_LOG_LEVEL", "")
    assert env_level(logging.ERROR) == logging.ERROR
    monkeypatch.setenv("FLOTILLA_LOG_LEVEL", "verbose")
    with pytest.raises(ValueError, match="FLOTILLA_LOG_LEVEL 'verbose'"):
        env_level(logging.ERROR)
