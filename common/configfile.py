"""Load a TOML config file into a strict struct, with `FLOTILLA_*` environment overrides."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

T = TypeVar("T", bound=msgspec.Struct)


class ConfigError(Exception):
    """A config file or override that cannot be used; the message is one line naming the key."""


def _override_value(raw: str) -> Any:
    """Environment values are TOML scalars or arrays when they parse as such, else strings."""
    try:
        return tomllib.loads(f"x = {raw}")["x"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env(data: dict[str, Any], env: Mapping[str, str], prefix: str) -> dict[str, Any]:
    """`FLOTILLA_DAEMON_NODE_ID=...` sets `node_id`; `__` descends a table: `..._NATS__URL`."""
    out = dict(data)
    for name, raw in env.items():
        if not name.startswith(prefix) or not raw:
            continue
        path = name[len(prefix) :].lower().split("__")
        node = out
        for key in path[:-1]:
            child = node.get(key)
            node[key] = dict(child) if isinstance(child, dict) else {}
            node = node[key]
        node[path[-1]] = _override_value(raw)
    return out


def load_config(
    tp: type[T],
    path: Path | None,
    *,
    env: Mapping[str, str] | None = None,
    env_prefix: str,
    required: bool = False,
) -> T:
    data: dict[str, Any] = {}
    if path is not None:
        if path.exists():
            try:
                data = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
            except OSError as exc:
                raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        elif required:
            raise ConfigError(f"{path}: no such config file")
    data = apply_env(data, os.environ if env is None else env, env_prefix)
    try:
        return msgspec.convert(data, tp, strict=False)
    except msgspec.ValidationError as exc:
        where = f"{path}: " if path else ""
        raise ConfigError(f"{where}{_humanize(str(exc))}") from exc


def _humanize(message: str) -> str:
    return message.replace("Object contains unknown field", "unknown key").replace("`$.", "`")
