"""A simulator process yields the CPU to the stack under autogroup scheduling too."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from control.sim.niceness import autogroup_nice

PROBE = """
import json, os
from control.sim.niceness import autogroup_nice, lower_priority
lower_priority(3)
print(json.dumps({"nice": os.nice(0), "autogroup": autogroup_nice()}))
"""


def _run(new_session: bool) -> dict[str, int | None]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60,
        start_new_session=new_session,
    )  # fmt: skip
    found: dict[str, int | None] = json.loads(out.stdout)
    return found


def test_a_session_leader_sets_its_sessions_niceness() -> None:
    if autogroup_nice() is None:
        pytest.skip("this kernel has no autogroup scheduling")
    before = _run(new_session=True)
    # The process's own nice value alone would leave its session an equal share of the CPU.
    assert before["nice"] is not None and before["autogroup"] == before["nice"]
    assert before["nice"] >= 3


def test_a_process_sharing_its_session_leaves_the_group_alone() -> None:
    mine = autogroup_nice()
    if mine is None:
        pytest.skip("this kernel has no autogroup scheduling")
    got = _run(new_session=False)
    assert got["autogroup"] == mine  # its parent's session (this test's) is not slowed
    assert autogroup_nice() == mine
