"""Structured logs on stdout: human lines on a TTY, JSON lines under systemd or with --log-json."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

#: `extra=` keys copied into JSON lines (and appended to human lines) when present.
CONTEXT_FIELDS = ("tenant", "job_id", "node_id", "attempt", "pool", "event")


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


def want_json(explicit: bool | None) -> bool:
    """JSON when asked, or when stdout is not a TTY under systemd (JOURNAL_STREAM is set)."""
    if explicit is not None:
        return explicit
    return bool(os.environ.get("JOURNAL_STREAM")) or not sys.stdout.isatty()


def setup_logging(json_lines: bool | None = None, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if want_json(json_lines) else HumanFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("nats").setLevel(logging.WARNING)
