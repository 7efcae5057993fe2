"""README's quickstart block, run as written from a fresh checkout directory: `flotilla dev` in
one process until Ctrl-C, then each other line. The transcode must complete into the dev media
root and `nodes` must list both dev nodes. Only `.venv/bin/` is replaced, by this venv's bin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.support.devfleet import open_dir

README = Path(__file__).resolve().parents[2] / "README.md"
VENV_BIN = Path(sys.executable).parent
BLOCK = re.compile(r"try the commands by hand:\n\n```sh\n(.*?)```", re.S)
pytestmark = pytest.mark.timeout(600)


def quickstart() -> list[list[str]]:
    """The block's command lines as argv lists (comments dropped)."""
    match = BLOCK.search(README.read_text())
    assert match, "README has no quickstart block after 'try the commands by hand:'"
    lines = []
    for line in match[1].splitlines():
        argv = shlex.split(line, comments=True)
        assert argv[0] == ".venv/bin/flotilla", line
        lines.append([str(VENV_BIN / "flotilla"), *argv[1:]])
    return lines


def test_the_quickstart_is_a_fleet_then_commands() -> None:
    lines = quickstart()
    assert lines[0][1] == "dev" and len(lines) >= 2


@pytest_asyncio.fixture
async def checkout() -> AsyncIterator[tuple[Path, dict[str, str]]]:
    """A directory standing for a fresh checkout, and an environment with no fleet of ours: no
    FLOTILLA_* variables, and contexts under the directory (not the user's)."""
    async with open_dir("flotilla-quickstart-") as path:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLOTILLA_")}
        env["XDG_CONFIG_HOME"] = str(path / "config")
        yield path, env


async def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


async def test_the_readme_quickstart_runs_as_written(
    checkout: tuple[Path, dict[str, str]],
) -> None:
    cwd, env = checkout
    dev_argv, *commands = quickstart()
    dev = await asyncio.create_subprocess_exec(
        *dev_argv, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert dev.stdout is not None
    said: list[str] = []
    try:
        # Up once it prints where its logs are (its last line before waiting for Ctrl-C).
        while not (said and said[-1].startswith("logs ")):
            line = await asyncio.wait_for(dev.stdout.readline(), 240)
            assert line, "flotilla dev exited:\n" + "".join(said)
            said.append(line.decode(errors="replace"))
        assert any(s.startswith("sample ") for s in said), said
        outputs = [await _run(argv, cwd, env) for argv in commands]
        for argv, (rc, out) in zip(commands, outputs, strict=True):
            assert rc == 0, f"{shlex.join(argv)}\n{out}"
        submit = next(argv for argv in commands if argv[1] == "submit")
        output = submit[next(i for i, a in enumerate(submit) if a.startswith("-")) - 1]
        assert (cwd / output).stat().st_size > 0, output
        nodes = outputs[[argv[1] for argv in commands].index("nodes")][1]
        assert "dev-1" in nodes and "dev-2" in nodes, nodes
    finally:
        with contextlib.suppress(ProcessLookupError):
            dev.send_signal(signal.SIGINT)  # Ctrl-C: the fleet stops its services and servers
        rest = await asyncio.wait_for(dev.stdout.read(), 180)
    assert await dev.wait() == 0, "".join(said) + rest.decode(errors="replace")
