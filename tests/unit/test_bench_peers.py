"""The side-by-side bench's contract with a peers folder: where it is, and the JSON line each
peer's script prints (run for real, as a subprocess of a script in a temp folder)."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from bench.bench_peers import ENV, PEERS, Figures, fsynced_peers, peer, peers_dir, table


def test_no_peers_folder_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(SystemExit, match=f"--peers DIR or set {ENV}"):
        peers_dir(None)


def test_a_folder_without_the_scripts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a peers folder"):
        peers_dir(str(tmp_path))


def _script(folder: Path, name: str, result: dict[str, Any]) -> None:
    """A peer's run.sh: chatter on stdout first, its JSON last, and its arguments recorded."""
    (folder / name).mkdir(parents=True)
    run = folder / name / "run.sh"
    line = json.dumps(result)
    run.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$@ port=$PEERS_REDIS_PORT" > "{folder / name / "args"}"\n'
        "echo 'setting up'\n"
        f"echo '{line}'\n"
    )
    run.chmod(run.stat().st_mode | stat.S_IXUSR)


def _config(rate: float, p50: float, p99: float) -> dict[str, object]:
    return {
        "throughput": {"tasks_per_s": rate, "cpu_ms_per_task": {"worker": 1.5, "redis": 0.2}},
        "latency": {"submit_to_start": {"p50_ms": p50, "p99_ms": p99}},
    }


async def test_a_peers_json_line_becomes_its_figures(tmp_path: Path) -> None:
    result = {"peer": "celery_redis", "configs": {"default": _config(700.0, 1.4, 2.2)}}
    for name in PEERS:
        _script(tmp_path, name, result)
    folder = peers_dir(str(tmp_path))
    args = argparse.Namespace(target_s=5.0, lat_s=3.0, rate=50.0)
    got = await peer(folder, "celery_redis", "default", args)
    assert [(f.name, f.rate, f.p50, f.p99) for f in got] == [
        ("celery_redis/default", 700.0, 1.4, 2.2)
    ]
    passed = (tmp_path / "celery_redis" / "args").read_text()
    assert "--only default" in passed and "--skip-kill" in passed
    assert "port=" in passed and "port=\n" not in passed  # a free port of its own


async def test_a_failing_peer_says_so(tmp_path: Path) -> None:
    for name in PEERS:
        (tmp_path / name).mkdir()
        (tmp_path / name / "run.sh").write_text("echo 'no redis-server' >&2\nexit 3\n")
    args = argparse.Namespace(target_s=5.0, lat_s=3.0, rate=50.0)
    with pytest.raises(SystemExit, match="arq failed \\(exit 3\\):\nno redis-server"):
        await peer(tmp_path, "arq", "tuned_2w", args)


def test_the_table_prints_ratios_against_flotilla() -> None:
    rows = [Figures("flotilla", 800.0, 1.0, 2.0), Figures("celery_redis/default", 400.0, 2.0, 3.0)]
    out = table(rows)
    line = next(r for r in out.splitlines() if r.startswith("celery_redis/default"))
    assert line.split()[-2:] == ["2.00", "2.00"]  # twice the rate, half the p50


_REDIS_LINE = (
    'redis-server --port "$PEERS_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \\\n'
)


def test_the_fsync_peer_is_a_copy_whose_redis_fsyncs_every_write(tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    _script(peers, "celery_redis", {})
    (peers / "_redis.sh").write_text(f"peers_redis_start() {{\n  {_REDIS_LINE}}}\n")
    copy = fsynced_peers(peers, tmp_path / "work")
    started = (copy / "_redis.sh").read_text()
    assert "--appendonly yes --appendfsync always" in started
    assert "--appendonly no" not in started
    assert (copy / "celery_redis" / "run.sh").is_file()
    assert "--appendonly no" in (peers / "_redis.sh").read_text()  # the original is left alone


def test_an_fsync_peer_from_a_script_it_does_not_know_is_refused(tmp_path: Path) -> None:
    peers = tmp_path / "peers"
    _script(peers, "celery_redis", {})
    (peers / "_redis.sh").write_text("redis-server --appendonly yes\n")
    with pytest.raises(SystemExit, match="no single '--appendonly no' to change"):
        fsynced_peers(peers, tmp_path / "work")
