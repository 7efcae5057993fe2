"""Where CLI commands find the fleet: flags, then environment, then the dev fleet's context file."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common.natsconn import NatsSettings


def context_path() -> Path:
    explicit = os.environ.get("FLOTILLA_CONTEXT")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flotilla" / "context.json"


def read_context() -> dict[str, str]:
    path = context_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def write_context(values: dict[str, str]) -> Path:
    path = context_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(values, indent=2) + "\n")
    return path


def nats_settings(args: argparse.Namespace) -> NatsSettings:
    """Flags and environment (argparse defaults read the env) win over the context file."""
    ctx = read_context()
    url = getattr(args, "nats_url", None) or ctx.get("nats_url") or "nats://127.0.0.1:4222"
    prefix = getattr(args, "prefix", None) or ctx.get("prefix") or "flotilla"
    creds = getattr(args, "creds", None) or ctx.get("nats_credentials")
    return NatsSettings(url=url, prefix=prefix, credentials=creds)
