"""Deploy-tier fixtures: the offline wheelhouse (`make dist`), built once per session."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tools/dist.py's wheelhouse for this machine's Python and architecture only (the one the
    roles install here); building it is the only step that reaches the package index."""
    out = tmp_path_factory.mktemp("wheelhouse")
    target = f"cp{sys.version_info[0]}{sys.version_info[1]}-{platform.machine()}"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "dist.py"), "--out", str(out), "--target", target],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def closed_port() -> Iterator[int]:
    """A local port bound by nobody listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]
