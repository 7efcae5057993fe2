"""The control side's error root: each error carries the CLI exit code it maps to."""

from __future__ import annotations


class CliError(Exception):
    exit_code = 1


class NotFound(CliError):
    exit_code = 4


class Unreachable(CliError):
    exit_code = 3


class BadInput(CliError):
    exit_code = 2
