"""What the make targets would run (`make -n -B`, nothing is run): `make demo` needs only
Python, so it works on a machine with neither promtool nor apt-get, and the targets that run
the Prometheus rule tests get promtool first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MAKE = shutil.which("make") or "make"


def planned(target: str) -> str:
    proc = subprocess.run(
        [MAKE, "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_demo_needs_no_promtool() -> None:
    plan = planned("demo")
    assert "pip install" in plan and "control.devstack.demo" in plan
    assert "promtool" not in plan


@pytest.mark.parametrize("target", ["install", "test", "test-deploy"])
def test_install_and_the_tests_get_promtool(target: str) -> None:
    assert "promtool --version" in planned(target)
