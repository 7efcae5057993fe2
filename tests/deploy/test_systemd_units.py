"""The shipped systemd units: `systemd-analyze verify` clean, exposure at most 2.0, drain-safe.

`verify` checks that ExecStart= is executable, and /opt/flotilla does not exist on a test machine,
so the units are copied into a temp dir with the release's bin dir (and /opt/nats-server/bin)
pointed at this venv's bin dir, where the same console scripts are installed. Nothing else is
changed.
On systemd 252 `verify` exits 0 even on unknown keys, so any stderr line about the unit fails.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import DaemonConfig

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
ROLES = REPO / "ansible" / "roles"
VENV_BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
NO_GPU = "flotilla-daemon.service.d/no-gpu.conf"
MAX_EXPOSURE = 2.0


def _directives(unit: Path) -> dict[str, list[str]]:
    """Key -> every value assigned in the unit (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def _stage(tmp_path: Path, with_no_gpu: bool = False) -> Path:
    for unit in UNITS.glob("*.service"):
        text = unit.read_text()
        text = text.replace("/opt/flotilla/current/bin/", f"{VENV_BIN}/")
        text = text.replace("/opt/flotilla-control/current/bin/", f"{VENV_BIN}/")
        text = text.replace("/opt/nats-server/bin/", f"{VENV_BIN}/")
        (tmp_path / unit.name).write_text(text)
    if with_no_gpu:
        dropin = tmp_path / NO_GPU
        dropin.parent.mkdir()
        shutil.copy(UNITS / f"{NO_GPU}.example", dropin)
    return tmp_path


def _verify(unit: Path) -> list[str]:
    proc = subprocess.run(
        [ANALYZE, "verify", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [
        line
        for line in proc.stderr.splitlines()
        if unit.name in line or str(unit.parent) in line or "flotilla" in line
    ]
    if proc.returncode != 0:
        problems.append(f"exit {proc.returncode}: {proc.stderr.strip()}")
    return problems


def _exposure(unit_dir: Path, name: str) -> float:
    proc = subprocess.run(
        [ANALYZE, "security", "--offline=true", "--no-pager", str(unit_dir / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout)
    assert match, f"no exposure line in:\n{proc.stdout}\n{proc.stderr}"
    return float(match.group(1))


@pytest.mark.parametrize("name", sorted(p.name for p in UNITS.glob("*.service")))
def test_verify_is_clean(tmp_path: Path, name: str) -> None:
    assert (VENV_BIN / "flotilla").exists() and (VENV_BIN / "nats-server").exists()
    assert _verify(_stage(tmp_path) / name) == []


def test_verify_is_clean_with_the_no_gpu_dropin(tmp_path: Path) -> None:
    assert _verify(_stage(tmp_path, with_no_gpu=True) / "flotilla-daemon.service") == []


def test_verify_check_catches_unknown_keys(tmp_path: Path) -> None:
    """systemd 252 exits 0 here; the stderr rule above is what catches it."""
    unit = _stage(tmp_path) / "flotilla-control.service"
    unit.write_text(unit.read_text().replace("[Service]\n", "[Service]\nProtectEverything=yes\n"))
    assert any("ProtectEverything" in line for line in _verify(unit))


@pytest.mark.parametrize(
    ("name", "no_gpu"),
    [
        ("flotilla-daemon.service", False),
        ("flotilla-daemon.service", True),
        ("flotilla-control.service", False),
        ("nats-server.service", False),
    ],
)
def test_exposure_is_at_most_2(tmp_path: Path, name: str, no_gpu: bool) -> None:
    assert _exposure(_stage(tmp_path, with_no_gpu=no_gpu), name) <= MAX_EXPOSURE


def test_daemon_unit_lets_the_drain_finish() -> None:
    d = _directives(UNITS / "flotilla-daemon.service")
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["KillMode"] == ["mixed"] and d["KillSignal"] == ["SIGTERM"]
    # The stop timeout must outlast the daemon's default drain deadline.
    assert float(d["TimeoutStopSec"][0]) > DaemonConfig().drain_deadline
    assert int(d["WatchdogSec"][0]) > 0
    assert d["ExecStart"] == [
        "/opt/flotilla/current/bin/flotilla daemon --config /etc/flotilla/daemon.toml"
    ]


def test_out_of_memory_kills_a_job_not_the_daemon() -> None:
    d = _directives(UNITS / "flotilla-daemon.service")
    assert d["OOMPolicy"] == ["continue"]  # an ffmpeg killed for memory leaves the unit up
    assert int(d["OOMScoreAdjust"][0]) < 0  # and the daemon is the last to go


@pytest.mark.parametrize("name", ["flotilla-daemon.service", "flotilla-control.service"])
def test_units_are_hardened(name: str) -> None:
    d = _directives(UNITS / name)
    expected = {
        "User": "flotilla",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "NoNewPrivileges": "true",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "Restart": "on-failure",
    }
    assert {k: d[k][0] for k in expected} == expected
    assert "@system-service" in d["SystemCallFilter"]


def test_daemon_unit_grants_gpus_explicitly() -> None:
    d = _directives(UNITS / "flotilla-daemon.service")
    assert d["DevicePolicy"] == ["closed"]
    assert d["DeviceAllow"] == ["char-nvidia* rw", "char-drm rw"]
    assert d["SupplementaryGroups"] == ["video render"]
    assert "PrivateDevices" not in d


def test_every_hardening_line_says_why() -> None:
    """In the hardening block every run of directives is headed by a comment."""
    for unit in ("flotilla-daemon.service", "flotilla-control.service"):
        block = (UNITS / unit).read_text().split("# --- hardening", 1)[1].split("[Install]")[0]
        previous = ""
        for line in block.splitlines()[1:]:
            if "=" in line and not line.startswith("#"):
                assert previous.startswith("#") or "=" in previous, f"{unit}: {line} says no why"
            previous = line.strip()


def test_shipped_nats_config_is_valid_and_syncs_always() -> None:
    conf = UNITS / "nats-server.conf"
    assert re.search(r"^\s*sync_interval:\s*always\s*$", conf.read_text(), re.MULTILINE)
    proc = subprocess.run(
        [str(VENV_BIN / "nats-server"), "-t", "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    ("shipped", "role_copy"),
    [
        (f"{NO_GPU}.example", "flotilla_daemon/files/no-gpu.conf"),
        ("flotilla-gpu-init.service", "flotilla_daemon/files/flotilla-gpu-init.service"),
    ],
)
def test_the_roles_install_the_shipped_files(shipped: str, role_copy: str) -> None:
    """The roles carry copies (a role must stand alone); they must not drift from systemd/.
    (Units the roles render from templates are compared in tests/deploy/test_ansible.py.)"""
    assert (UNITS / shipped).read_text() == (ROLES / role_copy).read_text()
