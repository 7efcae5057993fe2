"""The README's configuration reference is the generated text, and every config key is described."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from common.configfile import load_config
from control import configdoc
from control.config import ControlConfig
from daemon.config import DaemonConfig

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_holds_the_generated_reference() -> None:
    section = configdoc.readme_section(README.read_text())
    assert section is not None, f"README.md lacks {configdoc.START} / {configdoc.END}"
    assert section == configdoc.render().strip(), (
        f"README.md's configuration reference is stale; regenerate: {configdoc.REGENERATE}"
    )


@pytest.mark.parametrize("tp", [DaemonConfig, ControlConfig], ids=lambda t: t.__name__)
def test_every_field_has_a_description(tp: type[msgspec.Struct]) -> None:
    missing = configdoc.missing_docs(tp)
    assert not missing, f"add a `#:` comment above: {', '.join(missing)}"


def test_documented_env_names_really_override() -> None:
    """Each row's environment name sets that key through the real loader."""
    cases: list[tuple[type[msgspec.Struct], str, tuple[str, ...], str]] = [
        (DaemonConfig, "FLOTILLA_DAEMON_", ("nats", "prefix"), "relay"),
        (DaemonConfig, "FLOTILLA_DAEMON_", ("threads_per_job",), "3"),
        (ControlConfig, "FLOTILLA_CONTROL_", ("alerts", "queue_depth"), "7"),
    ]
    for tp, prefix, path, raw in cases:
        table = configdoc.table(tp, prefix)
        env = prefix + "__".join(path).upper()
        assert f"`{env}`" in table
        cfg: object = load_config(tp, None, env={env: raw}, env_prefix=prefix)
        for key in path:
            cfg = getattr(cfg, key)
        assert str(cfg) == raw


def test_rows_follow_the_struct_types() -> None:
    rows = {".".join(r.path): r for r in configdoc.rows(DaemonConfig)}
    assert rows["nats"].type == "table"
    assert rows["nats.partitions"].type == "int (≥ 1, ≤ 1024)"
    assert rows["nats.credentials"].default == "unset"
    assert rows["allowed_roots"].default == '`["/srv/media"]`'
    assert rows["node_id"].default == "computed"  # the host name: must not leak into the README


def test_write_replaces_only_the_marked_section(tmp_path: Path) -> None:
    doc = tmp_path / "README.md"
    doc.write_text(f"# head\n\n{configdoc.START}\nold\n{configdoc.END}\n\ntail\n")
    configdoc.write(doc)
    text = doc.read_text()
    assert text.startswith("# head\n\n") and text.endswith("\n\ntail\n")
    assert configdoc.readme_section(text) == configdoc.render().strip()
