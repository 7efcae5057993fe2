"""Structured logs on stderr: human lines on a TTY, JSON lines under systemd or with --log-json.

Logs never go to stdout, so a command's output (`--json` documents, tables) stays clean for
scripts. Under systemd (stderr is the journal stream named by JOURNAL_STREAM) every line starts
with its syslog priority, `<3>` for an error, so journald keeps the level (`journalctl -p err`).
The level comes from `--log-level` or FLOTILLA_LOG_LEVEL (`debug`, `info`, `warning`, `error`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

#: `extra=` keys copied into JSON lines (and appended to human lines) when present.
CONTEXT_FIELDS = ("tenant", "job_id", "node_id", "attempt", "pool", "event")
#: Names `--log-level` and FLOTILLA_LOG_LEVEL take, lowest first.
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
LEVEL_ENV = "FLOTILLA_LOG_LEVEL"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_FIELDS:
            if key in record.__dict__:
                out[key] = record.__dict__[key]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class HumanFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        ctx = " ".join(f"{k}={record.__dict__[k]}" for k in CONTEXT_FIELDS if k in record.__dict__)
        line = f"{stamp} {record.levelname[0]} {record.name}: {record.getMessage()}"
        if ctx:
            line = f"{line} [{ctx}]"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


def syslog_priority(level: int) -> int:
    """The syslog priority journald reads from a `<N>` line prefix (sd-daemon(3))."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


class JournalPrefix(logging.Formatter):
    """Wraps a formatter: each line of a record starts with `<priority>` for journald."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


def journal_stream(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journal connection systemd gave us (JOURNAL_STREAM is
    `<device>:<inode>` of it; a child that redirected stderr keeps the variable, not the link)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (ValueError, OSError, AttributeError):
        return False


def error_line(message: str) -> str:
    """A command's one error line for stderr, with the journal's error priority under systemd."""
    prefix = "<3>" if journal_stream(sys.stderr) else ""
    return f"{prefix}flotilla: error: {message}"


def parse_level(text: str, source: str) -> int:
    """A level name (any case) or raise ValueError naming `source` and the allowed names."""
    level = LEVELS.get(text.strip().lower())
    if level is None:
        raise ValueError(f"{source} {text!r}: choose one of {', '.join(LEVELS)}")
    return level


def env_level(default: int) -> int:
    """FLOTILLA_LOG_LEVEL when set (ValueError when it names no level), else `default`."""
    raw = os.environ.get(LEVEL_ENV, "")
    return parse_level(raw, LEVEL_ENV) if raw.strip() else default


def want_json(explicit: bool | None, stream: TextIO | None = None) -> bool:
    """JSON when asked, else under systemd (JOURNAL_STREAM is set) or when the log stream is
    not a terminal."""
    if explicit is not None:
        return explicit
    out = sys.stderr if stream is None else stream
    return bool(os.environ.get("JOURNAL_STREAM")) or not out.isatty()


def setup_logging(
    json_lines: bool | None = None, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    out = sys.stderr if stream is None else stream
    formatter: logging.Formatter = (
        JsonFormatter() if want_json(json_lines, out) else HumanFormatter()
    )
    if journal_stream(out):
        formatter = JournalPrefix(formatter)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # nats-py's own logger is chatty; it follows a debug level, else shows warnings and up.
    logging.getLogger("nats").setLevel(logging.DEBUG if level <= logging.DEBUG else logging.WARNING)
