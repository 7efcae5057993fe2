"""For tests of runs started beside the input's probe (daemon.ops.beside)."""

from __future__ import annotations

import asyncio
from types import ModuleType
from typing import Any, Protocol

import pytest

from schemas.results import ProbeInfo

#: Long enough for the probe to wait on the run's start when they overlap; a run that waits
#: for the probe would leave it waiting this long, and the test fails.
OVERLAP_WAIT = 60.0


class Started(Protocol):
    first: asyncio.Event  # set when the operation announces its first ffmpeg command


def probe_waits_for_the_run(
    monkeypatch: pytest.MonkeyPatch, module: ModuleType, commands: Started
) -> list[bool]:
    """Make `module.probe_input` wait for the first command before probing; the returned list
    gets True if the run had started by then, False if the probe gave up waiting."""
    real = module.probe_input
    seen: list[bool] = []

    async def probe_after_the_run_started(*args: Any) -> ProbeInfo:
        try:
            await asyncio.wait_for(commands.first.wait(), OVERLAP_WAIT)
            seen.append(True)
        except TimeoutError:
            seen.append(False)
        info: ProbeInfo = await real(*args)
        return info

    monkeypatch.setattr(module, "probe_input", probe_after_the_run_started)
    return seen
