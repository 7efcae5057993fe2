"""`python -m control` runs the `flotilla` CLI (used where the console script is not on PATH)."""

from control.cli.main import entry

entry()
