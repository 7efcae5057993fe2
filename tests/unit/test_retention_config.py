"""Retention settings: defaults, and a bad value stops start-up naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.configfile import ConfigError, load_config
from control.config import ControlConfig
from control.retention import Policy


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> ControlConfig:
    path = tmp_path / "control.toml"
    path.write_text(text)
    return load_config(ControlConfig, path, env=env or {}, env_prefix="FLOTILLA_CONTROL_")


def test_defaults_and_overrides_reach_the_policy(tmp_path: Path) -> None:
    assert Policy.of(_load(tmp_path, "")) == Policy()
    cfg = _load(
        tmp_path,
        "job_retention_days = 7\ncanary_retention_days = 0.25\nprune_batch = 10\n",
        env={"FLOTILLA_CONTROL_DEAD_LETTER_RETENTION_DAYS": "3"},
    )
    p = Policy.of(cfg)
    assert (p.jobs, p.canary_jobs, p.dead_letters, p.batch) == (7.0, 0.25, 3.0, 10)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("job_retention_days = 0\n", "job_retention_days"),
        ("canary_retention_days = -1\n", "canary_retention_days"),
        ("rejected_event_retention_days = 'long'\n", "rejected_event_retention_days"),
        # Under a day, a job that finished yesterday would get its webhook a second time.
        ("webhook_retention_days = 0.5\n", "webhook_retention_days"),
        ("dead_letter_retention_days = 0\n", "dead_letter_retention_days"),
        ("prune_batch = 0\n", "prune_batch"),
        ("job_retention = 5\n", "unknown key `job_retention`"),
        # Deleted before the canary runner reads its outcome, a canary would count as failed.
        ("canary_retention_days = 0.001\ncanary_timeout = 90\n", "canary_retention_days"),
    ],
)
def test_a_bad_retention_setting_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    message = str(info.value)
    assert key in message and "\n" not in message
