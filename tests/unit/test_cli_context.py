"""Where a command connects: flags over FLOTILLA_* variables over the fleet context; contexts
kept per fleet, with the fleet's identity; auth flags checked before any connection."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from control.cli.context import (
    load_context,
    redact,
    resolve,
    write_context,
)
from control.errors import BadInput

FLEET = {"nats_url": "nats://127.0.0.1:4999", "prefix": "fl", "fleet_id": "FL_JOBS@t1"}


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    monkeypatch.delenv("FLOTILLA_CONTEXT", raising=False)
    return tmp_path / "cfg" / "flotilla"


def args(**given: str) -> argparse.Namespace:
    return argparse.Namespace(**given)


def test_no_context_means_the_default_server() -> None:
    target = resolve(args())
    assert target.settings.url == "nats://127.0.0.1:4222" and target.context is None


def test_each_fleet_has_its_own_context_and_one_is_current(config_home: Path) -> None:
    write_context(FLEET, "dev")
    write_context({**FLEET, "nats_url": "nats://127.0.0.1:5000", "fleet_id": "x@2"}, "demo",
                  make_current=False)  # fmt: skip
    assert sorted(p.name for p in (config_home / "contexts").iterdir()) == [
        "demo.json",
        "dev.json",
    ]
    target = resolve(args())
    assert target.settings.url == FLEET["nats_url"] and target.settings.prefix == "fl"
    assert target.context is not None and target.context.fleet_id == "FL_JOBS@t1"
    other = resolve(args(context="demo"))
    assert other.settings.url == "nats://127.0.0.1:5000"
    assert other.context is not None and other.context.name == "demo"


def test_an_explicit_url_skips_the_context() -> None:
    write_context(FLEET, "dev")
    target = resolve(args(nats_url="nats://10.0.0.1:4222"))
    assert target.context is None and target.settings.prefix == "flotilla"


def test_a_context_file_by_path(tmp_path: Path) -> None:
    path = tmp_path / "ctx.json"
    path.write_text(json.dumps(FLEET))
    ctx = load_context(str(path))
    assert ctx is not None and ctx.fleet_id == FLEET["fleet_id"]
    with pytest.raises(BadInput, match="no such context file"):
        resolve(args(context=str(tmp_path / "missing.json")))


def test_an_unknown_name_lists_the_known_ones() -> None:
    write_context(FLEET, "dev")
    with pytest.raises(BadInput, match=r"--context 'prod': no such context \(known: dev\)"):
        resolve(args(context="prod"))
    with pytest.raises(BadInput, match="context name"):
        resolve(args(context="a b"))


def test_a_context_without_identity_is_refused(config_home: Path) -> None:
    """The single file of earlier versions cannot tell its fleet from another on its port."""
    config_home.mkdir(parents=True)
    (config_home / "context.json").write_text(json.dumps({"nats_url": "nats://127.0.0.1:4999"}))
    with pytest.raises(BadInput, match="records no fleet identity"):
        resolve(args())
    assert resolve(args(nats_url="nats://127.0.0.1:4999")).context is None


def test_flags_replace_the_contexts_credentials() -> None:
    write_context({**FLEET, "user": "ctx-user", "password": "ctx-pw"}, "dev")
    assert resolve(args()).settings.user == "ctx-user"
    target = resolve(args(user="me", password="pw"))
    assert (target.settings.user, target.settings.password) == ("me", "pw")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"password": "pw"}, "--password needs --user"),
        ({"tlskey": "/k"}, "--tlskey needs --tlscert"),
        ({"creds": "/no/such.creds"}, "--creds /no/such.creds: no such file"),
        ({"nkey": "/no/seed"}, "--nkey /no/seed: no such file"),
        ({"tlsca": "/no/ca.pem"}, "--tlsca /no/ca.pem: no such file"),
        ({"user": "u", "creds": "/etc/hostname"}, "give one of --creds, --user, not several"),
    ],
)
def test_auth_flags_are_checked_before_connecting(given: dict[str, str], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        resolve(args(nats_url="nats://127.0.0.1:4222", **given))


def test_auth_flags_fill_the_settings(tmp_path: Path) -> None:
    files = {name: tmp_path / name for name in ("seed", "ca.pem", "cert.pem", "key.pem")}
    for path in files.values():
        path.write_text("x")
    target = resolve(
        args(nats_url="tls://n:4222", nkey=str(files["seed"]), tlsca=str(files["ca.pem"]),
             tlscert=str(files["cert.pem"]), tlskey=str(files["key.pem"]),
             inbox_prefix="_INBOX_me")
    )  # fmt: skip
    s = target.settings
    assert (s.nkey_seed, s.tls_ca, s.tls_cert, s.tls_key) == tuple(
        str(files[n]) for n in ("seed", "ca.pem", "cert.pem", "key.pem")
    )
    assert target.inbox_prefix == "_INBOX_me"


def test_passwords_never_show_in_messages() -> None:
    assert redact("nats://u:secret@h:4222,nats://v:pw@g:4222") == (
        "nats://u:***@h:4222,nats://v:***@g:4222"
    )
    assert redact("nats://h:4222") == "nats://h:4222"
