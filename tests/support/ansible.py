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


def ansible_env(home: Path, extra: dict[str, str | None] | None = None) -> dict[str, str]:
    """The environment ansible runs with; `extra` adds variables (None removes one)."""
    env = {
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
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def offline_pip_env(closed_port: int) -> dict[str, str | None]:
    """pip with no index it can reach: the index URL is a closed local port, no index is
    allowed, and no pip config file or find-links of this machine is read."""
    env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("PIP_")}
    env |= {
        "PIP_NO_INDEX": "1",
        "PIP_INDEX_URL": f"http://127.0.0.1:{closed_port}/simple",
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_RETRIES": "0",
    }
    return env


def run_role(
    role: str,
    variables: dict[str, Any],
    workdir: Path,
    inventory: Path | None = None,
    env: dict[str, str | None] | None = None,
    playbook: Path | None = None,
) -> tuple[int, int]:
    """Apply `role` (to localhost, or to every host of `inventory`), or run `playbook` instead;
    return (ok, changed) summed over the recap, failing on any failed or unreachable host."""
    workdir.mkdir(parents=True, exist_ok=True)
    if playbook is None:
        playbook = workdir / f"apply-{role}.yml"
        playbook.write_text(APPLY.format(role=role, hosts="all" if inventory else "localhost"))
    extra = workdir / f"vars-{role}.json"
    extra.write_text(json.dumps({"ansible_python_interpreter": sys.executable, **variables}))
    hosts = ["-i", str(inventory)] if inventory else ["-i", "localhost,", "-c", "local"]
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), *hosts, "-e", f"@{extra}", str(playbook)],
        capture_output=True,
        text=True,
        env=ansible_env(workdir / ".ansible", env),
        timeout=600,
        check=False,
    )
    # The whole output, for what a test reads beyond the recap (e.g. the preflight's report).
    (workdir / f"{playbook.stem}.log").write_text(proc.stdout)
    recap = [m.groups()[1:] for line in proc.stdout.splitlines() if (m := RECAP.match(line))]
    assert proc.returncode == 0 and recap, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    ok, changed, unreachable, failed = (sum(int(row[i]) for row in recap) for i in range(4))
    assert (unreachable, failed) == (0, 0)
    return ok, changed


RENDER = """
- name: Render one template of a role with its defaults
  hosts: localhost
  gather_facts: false
  vars_files:
    - {defaults}
  tasks:
    - name: Render
      ansible.builtin.template:
        src: {src}
        dest: {dest}
        mode: "0644"
"""


def render_template(
    role: str, template: str, workdir: Path, variables: dict[str, Any] | None = None
) -> str:
    """`template` of `role` rendered as the role would with its defaults (plus `variables`)."""
    workdir.mkdir(parents=True, exist_ok=True)
    base = ANSIBLE / "roles" / role
    dest = workdir / Path(template).stem
    playbook = workdir / "render.yml"
    playbook.write_text(
        RENDER.format(
            defaults=base / "defaults" / "main.yml", src=base / "templates" / template, dest=dest
        )
    )
    extra = workdir / "render-vars.json"
    extra.write_text(
        json.dumps({"ansible_python_interpreter": sys.executable, **(variables or {})})
    )
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
         "-e", f"@{extra}", str(playbook)],
        capture_output=True, text=True, env=ansible_env(workdir / ".ansible"),
        timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return dest.read_text()
