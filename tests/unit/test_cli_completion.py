"""`flotilla completion bash|zsh`: the scripts come from the parser, and bash really completes
with the bash one (run in a real bash)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from control.cli.completion import levels, script
from control.cli.main import build_parser


def test_every_command_path_is_known() -> None:
    found = levels(build_parser())
    for path in ("", "submit", "submit transcode", "jobs retry", "keys rotate", "completion"):
        assert path in found, path
    assert {"drain", "resume", "nodes", "completion", "submit"} <= set(found[""].subs)
    assert found["submit transcode"].valued["--codec"] == ["h264", "hevc", "av1", "vp9", "none"]
    assert "--json" in found["drain"].options and "--user" in found["drain"].options


#: Commands that print no data of their own: services, and the completion script itself.
NO_JSON = {"daemon", "dev", "completion"}


def test_every_command_that_prints_data_takes_json() -> None:
    """README: every command that prints data takes --json (drain, cancel, keys, windows, …)."""
    found = levels(build_parser())
    leaves = {path for path, level in found.items() if path and not level.subs}
    assert {"drain", "resume", "cancel", "jobs retry", "windows", "keys revoke"} <= leaves
    assert {"workflow cancel", "tenants create", "nats init", "probe"} <= leaves
    missing = sorted(p for p in leaves - NO_JSON if "--json" not in found[p].options)
    assert missing == []
    assert "--json" in found["jobs"].options  # a command and the parent of `jobs retry`


def _bash_complete(script_path: Path, *words: str) -> list[str]:
    code = (
        f"source {script_path}\n"
        'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))\n'
        '_flotilla; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "-c", code, "bash", *words], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stderr == "", proc
    return [w for w in proc.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "flotilla.bash"
    path.write_text(script("bash", build_parser()))
    assert _bash_complete(path, "flotilla", "dra") == ["drain"]
    assert _bash_complete(path, "flotilla", "keys", "ro") == ["rotate"]
    assert _bash_complete(path, "flotilla", "drain", "--js") == ["--json"]
    assert _bash_complete(path, "flotilla", "submit", "transcode", "a", "b", "--codec", "h") == [
        "h264",
        "hevc",
    ]
    # An option's value is skipped: `--nats-url URL` does not end the command path.
    assert _bash_complete(path, "flotilla", "--log-level", "debug", "nodes", "--nats-url", "x",
                          "--j") == ["--json"]  # fmt: skip
    assert _bash_complete(path, "flotilla", "--log-level", "e") == ["error"]
    assert _bash_complete(path, "flotilla", "completion", "z") == ["zsh"]


def test_zsh_script_describes_commands() -> None:
    text = script("zsh", build_parser())
    assert text.startswith("#compdef flotilla\n")
    assert "'drain:stop a node pulling; running jobs finish or are handed back'" in text
    if shutil.which("zsh"):
        proc = subprocess.run(["zsh", "-n"], input=text, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
