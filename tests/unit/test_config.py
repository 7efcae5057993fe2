"""Config files: typed, strict, overridable from the environment, with one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.configfile import ConfigError, load_config
from control.config import ControlConfig
from control.devstack.fleet import NodeSettings
from daemon.config import DaemonConfig, MediaSettings


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(DaemonConfig, None, env={}, env_prefix="FLOTILLA_DAEMON_")
    assert cfg.threads_per_job == 2
    assert cfg.journal_path.name == "journal.sqlite3"


def test_file_and_env_override(tmp_path: Path) -> None:
    path = _write(tmp_path, 'node_id = "n1"\nthreads_per_job = 3\n[nats]\nurl = "nats://a:1"\n')
    env = {"FLOTILLA_DAEMON_THREADS_PER_JOB": "6", "FLOTILLA_DAEMON_NATS__PREFIX": "fx"}
    cfg = load_config(DaemonConfig, path, env=env, env_prefix="FLOTILLA_DAEMON_")
    assert (cfg.node_id, cfg.threads_per_job, cfg.nats.url, cfg.nats.prefix) == (
        "n1",
        6,
        "nats://a:1",
        "fx",
    )


def test_dev_node_settings_reach_the_daemon_config(tmp_path: Path) -> None:
    assert NodeSettings().toml() == ""  # `flotilla dev` nodes keep the daemon's defaults
    media = MediaSettings(http_hosts=["127.0.0.1"], http_allow_private=True, http_read_timeout=900)
    extra = NodeSettings(media=media, slots={"cpu": 2}).toml()
    path = _write(tmp_path, 'node_id = "n1"\n[nats]\nurl = "nats://a:1"\n' + extra)
    cfg = load_config(DaemonConfig, path, env={}, env_prefix="FLOTILLA_DAEMON_")
    assert (cfg.media, cfg.slots, cfg.nats.url) == (media, {"cpu": 2}, "nats://a:1")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1\n", "unknown key `bogus`"),
        ("[nats]\nurll = 'x'\n", "unknown key `urll` - at `nats`"),
        ("threads_per_job = 'many'\n", "Expected `int`"),
        ("threads_per_job = 0\n", "at `threads_per_job`"),
        ("node_id = 'Bad Name'\n", "at `node_id`"),
        ("node_id = \n", "not valid TOML"),
    ],
)
def test_bad_daemon_config(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(DaemonConfig, _write(tmp_path, text), env={}, env_prefix="FLOTILLA_DAEMON_")
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_bad_env_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="heartbeat_interval"):
        load_config(
            DaemonConfig,
            None,
            env={"FLOTILLA_DAEMON_HEARTBEAT_INTERVAL": "-1"},
            env_prefix="FLOTILLA_DAEMON_",
        )


def test_missing_required_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(ControlConfig, tmp_path / "nope.toml", env={}, env_prefix="X_", required=True)


def test_control_config_nested(tmp_path: Path) -> None:
    path = _write(tmp_path, "[alerts]\nqueue_depth = 5\n[topology]\npools = ['cpu']\n")
    cfg = load_config(ControlConfig, path, env={}, env_prefix="FLOTILLA_CONTROL_")
    assert cfg.alerts.queue_depth == 5 and cfg.topology.pools == ["cpu"]


def test_the_default_heartbeat_keeps_a_live_node_inside_the_control_planes_windows() -> None:
    """A live node must beat at least twice within the bucket's TTL and the offline threshold,
    so one late heartbeat never turns it offline or expires its entry."""
    daemon = load_config(DaemonConfig, None, env={}, env_prefix="FLOTILLA_DAEMON_")
    control = load_config(ControlConfig, None, env={}, env_prefix="FLOTILLA_CONTROL_")
    window = min(control.topology.node_ttl, control.alerts.node_offline_after)
    assert 2 * daemon.heartbeat_interval < window
