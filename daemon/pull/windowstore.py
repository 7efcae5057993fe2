"""Processing windows set at run time (`node.windows`), kept in the state dir across restarts.

The file holds the rules an operator set; while it exists they are in force instead of the
config file's `[[windows]]` (a SIGHUP keeps them and says so); resetting (`--from-config`)
removes it. A file that does not load is logged and ignored: the config's rules apply.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import msgspec

from schemas.windows import WindowRule

log = logging.getLogger("flotilla.daemon")
FILENAME = "windows.json"


class StoredWindows(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    v: int = 1
    rules: list[WindowRule]


def _read(path: Path) -> list[WindowRule] | None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=StoredWindows).rules
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        log.error("%s does not load (%s): using the config file's windows", path, exc)
        return None


def _write(path: Path, rules: list[WindowRule] | None) -> None:
    if rules is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(StoredWindows(rules=rules)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a crash leaves the old file or the new one, never half of one


async def load_override(state_dir: Path) -> list[WindowRule] | None:
    """The rules set at run time, or None when none are (the config's apply)."""
    return await asyncio.to_thread(_read, state_dir / FILENAME)


async def save_override(state_dir: Path, rules: list[WindowRule] | None) -> None:
    """Keep `rules` in force across restarts; None removes the override."""
    await asyncio.to_thread(_write, state_dir / FILENAME, rules)
