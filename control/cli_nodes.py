"""Node commands: nodes, drain, resume (placeholder until built)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the node commands to the `flotilla` parser (`sub` is its subparsers action)."""
    _ = (sub, argparse)
