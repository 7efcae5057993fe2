"""How client commands print: aligned tables for people, one JSON document for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import msgspec

from schemas import api

SHOWN_ONCE = "store this key now: it is shown only this once"


def print_json(value: object) -> None:
    """One JSON document on stdout (structs, lists and dicts of them)."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; None prints as `-`."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`; None as `-`."""
    if seconds is None:
        return "-"
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago a wall-clock timestamp was, as `duration` prints it."""
    if ts is None:
        return "-"
    return duration((time.time() if now is None else now) - ts) + " ago"


def when(ts: float | None) -> str | None:
    """A wall-clock timestamp as UTC date and time; None stays None."""
    return None if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def print_created(created: api.KeyCreated, as_json: bool) -> None:
    """The new key on stdout (its own last line, for scripts), the rest around it."""
    if as_json:
        print_json(created)
    else:
        info = created.info
        print(
            f"{info.key_id}: {info.role} key for tenant {info.tenant}, "
            f"expires {when(info.expires_at) or 'never'}"
        )
        if created.old_key_expires_at is not None:
            print(f"{info.rotated_from}: stops working at {when(created.old_key_expires_at)}")
        print(created.key, flush=True)
    print(f"flotilla: {SHOWN_ONCE}", file=sys.stderr)
