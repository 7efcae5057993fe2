"""A simulator process yields the CPU to the stack under autogroup scheduling too.

The first tests point the module at a file of their own, so they check what it writes on any
kernel; the last ones read the real `/proc/self/autogroup`, and where the kernel has none they
check that nothing is claimed (None) rather than skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from control.sim.niceness import AUTOGROUP, autogroup_nice

PROBE = """
import json, os, sys
from pathlib import Path
from control.sim.niceness import autogroup_nice, lower_priority
group = Path(sys.argv[1])
lower_priority(3, group)
print(json.dumps({"nice": os.nice(0), "autogroup": autogroup_nice(group)}))
"""


def _run(group: Path, new_session: bool) -> dict[str, int | None]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(group)], capture_output=True, text=True, check=True,
        timeout=60, start_new_session=new_session,
    )  # fmt: skip
    found: dict[str, int | None] = json.loads(out.stdout)
    return found


def test_a_session_leader_writes_its_niceness_to_its_group(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    got = _run(group, new_session=True)
    # The process's own nice value alone would leave its session an equal share of the CPU.
    assert got["nice"] is not None and got["nice"] >= 3
    assert group.read_text() == f"{got['nice']}\n"  # what the kernel's file takes


def test_a_process_sharing_its_session_leaves_the_group_alone(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    got = _run(group, new_session=False)
    assert got["nice"] is not None and got["nice"] >= 3  # its own nice value still applies
    assert group.read_text() == "/autogroup-7 nice 0\n"  # its parent's session is not slowed


def test_a_kernel_without_autogroup_leaves_the_nice_value_alone(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "autogroup"
    got = _run(missing, new_session=True)
    assert got["nice"] is not None and got["nice"] >= 3 and got["autogroup"] is None
    assert not missing.exists()


def test_the_groups_niceness_is_read_from_the_kernels_line(tmp_path: Path) -> None:
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-85 nice 19\n")
    assert autogroup_nice(group) == 19
    group.write_text("garbage\n")
    assert autogroup_nice(group) is None
    group.write_text("")  # the boot session's group, where a service without a session runs
    assert autogroup_nice(group) is None
    assert autogroup_nice(tmp_path / "absent") is None


BUSY_PROBE = """
import json, os, sys
from pathlib import Path
from control.sim.niceness import lower_priority

class Busy(type(Path())):
    refusals = int(sys.argv[2])
    def write_text(self, *a, **k):
        if Busy.refusals:
            Busy.refusals -= 1
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return super().write_text(*a, **k)

lower_priority(3, Busy(sys.argv[1]))
print(json.dumps({"left": Busy.refusals}))
"""


def test_a_write_the_kernel_refuses_for_now_is_tried_again(tmp_path: Path) -> None:
    """Without CAP_SYS_ADMIN the kernel takes one group write per tenth of a second from all
    processes together (EAGAIN otherwise): simulator processes started at once must retry."""
    group = tmp_path / "autogroup"
    group.write_text("/autogroup-7 nice 0\n")
    out = subprocess.run(
        [sys.executable, "-c", BUSY_PROBE, str(group), "3"], capture_output=True, text=True,
        check=True, timeout=60, start_new_session=True,
    )  # fmt: skip
    assert json.loads(out.stdout) == {"left": 0}
    assert group.read_text().strip().isdigit() and int(group.read_text()) >= 3


def test_this_kernel_takes_the_sessions_niceness() -> None:
    """The real file: where the kernel has autogroup, a session leader's group takes its value;
    where it has none, nothing is written and None is reported."""
    got = _run(AUTOGROUP, new_session=True)
    assert got["nice"] is not None and got["nice"] >= 3
    assert got["autogroup"] == (got["nice"] if AUTOGROUP.exists() else None)
    shared = _run(AUTOGROUP, new_session=False)
    assert shared["autogroup"] == autogroup_nice()  # this test's own session is untouched
