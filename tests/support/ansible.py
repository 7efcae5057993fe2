"""Applying a role of ansible/ locally with the venv's ansible-playbook."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
VENV_BIN = Path(sys.executable).parent

RECAP = re.compile(r"^(\S+)\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)")

APPLY = """
- name: Apply one role
  hosts: {hosts}
  gather_facts: false
  roles:
    - role: {role}
"""


def ansible_env(home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ANSIBLE / "roles"),
        # Ansible's own temp and cache files stay out of the real home directory.
        "ANSIBLE_HOME": str(home),
        "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
        "ANSIBLE_REMOTE_TEMP": str(home / "remote-tmp"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
    }


def run_role(
    role: str, variables: dict[str, Any], workdir: Path, inventory: Path | None = None
) -> tuple[int, int]:
    """Apply `role` (to localhost, or to every host of `inventory`); return (ok, changed) summed
    over the recap, failing on any failed or unreachable host."""
    workdir.mkdir(parents=True, exist_ok=True)
    playbook = workdir / f"apply-{role}.yml"
    playbook.write_text(APPLY.format(role=role, hosts="all" if inventory else "localhost"))
    extra = workdir / f"vars-{role}.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    hosts = ["-i", str(inventory)] if inventory else ["-i", "localhost,", "-c", "local"]
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), *hosts, "-e", f"@{extra}", str(playbook)],
        capture_output=True,
        text=True,
        env=ansible_env(workdir / ".ansible"),
        timeout=600,
        check=False,
    )
    recap = [m.groups()[1:] for line in proc.stdout.splitlines() if (m := RECAP.match(line))]
    assert proc.returncode == 0 and recap, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    ok, changed, unreachable, failed = (sum(int(row[i]) for row in recap) for i in range(4))
    assert (unreachable, failed) == (0, 0)
    return ok, changed
