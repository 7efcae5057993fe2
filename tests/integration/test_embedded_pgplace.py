"""The embedded PostgreSQL starts wherever its data directory and binaries are, root or not.

As root it runs as a system user that cannot enter a 0700 directory (root's home, `mktemp -d`);
what it needs is then placed under a state directory, the caller's directories keep their modes,
and a cluster whose data directory was deleted is removed by the next start.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import asyncpg
import pytest

from control.devstack import postgres as embedded_pg
from control.devstack.pgplace import POINTER, blocked_dirs, sweep_orphans
from control.devstack.stack import PostgresServer

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the system-user path is root's")


def _modes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mode for p in paths}


async def _sum(server: PostgresServer, sql: str) -> int:
    conn = await asyncpg.connect(server.dsn())
    try:
        await conn.execute(sql)
        return int(await conn.fetchval("SELECT sum(n) FROM t"))
    finally:
        await conn.close()


@as_root
async def test_starts_from_a_private_parent_as_root(
    tmp_path: Path, open_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "home"
    await asyncio.to_thread(private.mkdir, mode=0o700)
    # The binaries out of reach too, as in a checkout under root's home.
    real = embedded_pg.pg_install()
    site = private / "venv" / "site-packages"
    install = site / real.parent.name / real.name
    await asyncio.to_thread(shutil.copytree, real, install, symlinks=True)
    libs = real.parent.parent / f"{real.parent.name}.libs"
    await asyncio.to_thread(shutil.copytree, libs, site / libs.name, symlinks=True)
    monkeypatch.setattr(embedded_pg, "pg_install", lambda: install)
    state = open_tmp_path / "state"
    data = private / "data" / "pg"
    before = _modes([tmp_path, private, install])

    server = PostgresServer(data, state_dir=state)
    await server.start()
    try:
        pg = pwd.getpwnam("flotilla-pg")
        assert private in blocked_dirs(data, pg.pw_uid, pg.pw_gid)
        assert server.cluster_dir.is_relative_to(state / "clusters")
        assert server.data_dir == data and (data / POINTER).is_file()
        assert len(list(state.glob("pginstall-*/*/pginstall/bin/postgres"))) == 1
        assert await _sum(server, "CREATE TABLE t (n int); INSERT INTO t VALUES (1), (2)") == 3
        await server.stop()
        again = PostgresServer(data, state_dir=state)  # a new process: found by the pointer
        await again.start()
        try:
            assert again.cluster_dir == server.cluster_dir
            assert await _sum(again, "INSERT INTO t VALUES (3)") == 6
        finally:
            await again.stop()
    finally:
        await server.stop()
    assert _modes([tmp_path, private, install]) == before
    assert "server.log" in os.listdir(data)

    # Deleting the data directory is the end of its cluster: the next start sweeps it away.
    cluster = server.cluster_dir.parent
    await asyncio.to_thread(shutil.rmtree, data)
    other = PostgresServer(private / "other", state_dir=state)
    await other.start()
    try:
        assert not cluster.exists()
        assert list((state / "clusters").glob("*/data")) == [other.cluster_dir]
    finally:
        await other.stop()


@as_root
async def test_reachable_data_stays_in_place(open_tmp_path: Path) -> None:
    data = open_tmp_path / "pg"
    server = PostgresServer(data, state_dir=open_tmp_path / "state")
    await server.start()
    try:
        assert server.cluster_dir == data and (data / "PG_VERSION").is_file()
        assert not (data / POINTER).exists()
    finally:
        await server.stop()


def test_sweep_keeps_live_and_owned_clusters(tmp_path: Path) -> None:
    clusters = tmp_path / "clusters"
    owner = tmp_path / "owner"
    owner.mkdir()
    (owner / POINTER).write_text("aaaaaaaaaaaaaaaa\n")
    for key, origin in [
        ("aaaaaaaaaaaaaaaa", owner),  # its data directory points back: kept
        ("bbbbbbbbbbbbbbbb", owner),  # its data directory points elsewhere: orphan
        ("cccccccccccccccc", tmp_path / "gone"),  # its data directory was deleted: orphan
        ("dddddddddddddddd", tmp_path / "gone"),  # orphan, but its postmaster still runs
        ("eeeeeeeeeeeeeeee", None),  # being created: no origin yet
    ]:
        (clusters / key / "data").mkdir(parents=True)
        if origin is not None:
            (clusters / key / "origin").write_text(f"{origin}\n")
    (clusters / "dddddddddddddddd" / "data" / "postmaster.pid").write_text(f"{os.getpid()}\n")
    removed = sweep_orphans(tmp_path)
    assert sorted(p.name for p in removed) == ["bbbbbbbbbbbbbbbb", "cccccccccccccccc"]
    left = sorted(p.name for p in clusters.iterdir())
    assert left == ["aaaaaaaaaaaaaaaa", "dddddddddddddddd", "eeeeeeeeeeeeeeee"]


_CHILD = """
import asyncio, sys
from pathlib import Path
from control.devstack.stack import PostgresServer

async def main() -> None:
    server = PostgresServer(Path(sys.argv[1]))
    await server.start()
    try:
        print(server.cluster_dir == server.data_dir, flush=True)
    finally:
        await server.stop()

asyncio.run(main())
"""

_TEST_USER = "flotilla-test"


def _ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(_TEST_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", _TEST_USER], check=True
        )
        return pwd.getpwnam(_TEST_USER)


def _python_for(uid: int, gid: int) -> Path | None:
    """An interpreter of this one's version that the user can run: this one, else the system's."""
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for cand in (Path(sys.executable), Path(f"/usr/bin/python{want}"), Path("/usr/bin/python3")):
        if not cand.exists() or blocked_dirs(cand, uid, gid):
            continue
        probe = [str(cand), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"]
        if subprocess.run(probe, capture_output=True, text=True).stdout.strip() == want:
            return cand
    return None


def _reachable_tree(farm: Path) -> list[Path]:
    """Hard-link this checkout's packages and the venv's site-packages under `farm`.

    The checkout or the venv may sit under a 0700 home (a fresh clone in `mktemp -d`, pyenv
    under /root); links made by root in a world-readable directory reach the same files
    without changing any mode of the originals. Returns the PYTHONPATH entries.
    """
    code = Path(__file__).resolve().parents[2]
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    (farm / "code").mkdir()
    for pkg in ("schemas", "common", "daemon", "control"):
        subprocess.run(["cp", "-al", str(code / pkg), str(farm / "code" / pkg)], check=True)
    subprocess.run(["cp", "-al", str(site), str(farm / "site")], check=True)
    return [farm / "code", farm / "site"]


@as_root
@pytest.mark.timeout(300)
def test_starts_as_a_non_root_user() -> None:
    """Run as an ordinary user, the server is that user's own and starts in place."""
    user = _ensure_user()
    python = _python_for(user.pw_uid, user.pw_gid)
    if python is None:
        pytest.skip("no python of this version that an ordinary user can run")
    farm = Path(tempfile.mkdtemp(prefix="flotilla-nonroot-"))
    try:
        farm.chmod(0o755)  # our own temp dir, made traversable for the user
        path = _reachable_tree(farm)
        home = farm / "home"
        home.mkdir(mode=0o700)
        os.chown(home, user.pw_uid, user.pw_gid)  # its own 0700 directory
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        argv += ["--", str(python), "-c", _CHILD, str(home / "pg")]
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.pathsep.join(map(str, path)),
            "HOME": str(home),
        }
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=240)
        assert (res.returncode, res.stdout.strip()) == (0, "True"), res.stderr[-3000:]
    finally:
        shutil.rmtree(farm, ignore_errors=True)
