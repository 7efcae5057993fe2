"""Where CLI commands find the fleet: flags, then environment, then a fleet context.

A context is one fleet's connection facts, kept per fleet under `~/.config/flotilla/contexts/`
(`$XDG_CONFIG_HOME` moves it): `flotilla dev` writes `contexts/<name>.json` (name `dev` unless
`--context` says otherwise) and makes it the current one (the file `current` names it). Each
context records its fleet's identity: the jobs stream's name and creation time, which no other
fleet shares even on the same port. Before a command uses a context it checks that the server
still answers as that fleet, and refuses (exit 3) when nothing answers or another fleet does,
instead of talking to whatever now listens on the port.

`--context NAME|FILE` (or FLOTILLA_CONTEXT) picks one: a name under `contexts/`, or a file path
(anything with a `/`, or ending in `.json`), which is also where `flotilla dev` then writes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from common.natsconn import NatsSettings
from control.errors import BadInput, Unreachable
from schemas.subjects import Subjects

DEFAULT_URL = "nats://127.0.0.1:4222"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: Context keys that fill NatsSettings fields (a context may carry credentials too).
_SETTING_KEYS = ("credentials", "nkey_seed", "user", "password", "tls_ca", "tls_cert", "tls_key")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "flotilla"


def contexts_dir() -> Path:
    return config_dir() / "contexts"


def _current_file() -> Path:
    return config_dir() / "current"


def _legacy_file() -> Path:
    """The one context file of earlier versions; read (and refused) so it is never trusted."""
    return config_dir() / "context.json"


def is_file_ref(ref: str) -> bool:
    return "/" in ref or ref.endswith(".json")


def check_name(name: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise BadInput(
            f"context name {name!r}: letters, digits, '.', '-' and '_' (at most 64), "
            "or give a file path"
        )
    return name


def known_names() -> list[str]:
    with contextlib.suppress(OSError):
        return sorted(p.stem for p in contexts_dir().glob("*.json"))
    return []


@dataclass
class Context:
    name: str
    path: Path
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def fleet_id(self) -> str | None:
        value = self.values.get("fleet_id")
        return str(value) if value else None

    def get(self, key: str) -> str | None:
        value = self.values.get(key)
        return None if value in (None, "") else str(value)

    def label(self) -> str:
        return f"context {self.name!r} ({self.path})"


def _read(name: str, path: Path) -> Context | None:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise BadInput(f"context file {path}: unreadable ({exc}); remove it or fix it") from exc
    if not isinstance(data, dict):
        raise BadInput(f"context file {path}: not a JSON object; remove it or fix it")
    return Context(str(data.get("name") or name), path, data)


def context_file(ref: str) -> Path:
    """The file a context reference names."""
    if is_file_ref(ref):
        return Path(ref).expanduser()
    return contexts_dir() / f"{check_name(ref)}.json"


def load_context(ref: str | None) -> Context | None:
    """The context `ref` names (it must exist), else the current one, else None."""
    if ref:
        path = context_file(ref)
        found = _read(Path(ref).stem if is_file_ref(ref) else ref, path)
        if found is None:
            if is_file_ref(ref):
                raise BadInput(f"--context {ref}: no such context file")
            names = ", ".join(known_names()) or "none (run `flotilla dev`)"
            raise BadInput(f"--context {ref!r}: no such context (known: {names})")
        return found
    with contextlib.suppress(OSError):
        current = _current_file().read_text().strip()
        if current and _NAME.fullmatch(current):
            found = _read(current, contexts_dir() / f"{current}.json")
            if found is not None:
                return found
    return _read("context.json", _legacy_file())


def read_context(ref: str | None = None) -> dict[str, str]:
    """The chosen context's values, unchecked (empty when there is none)."""
    ctx = load_context(ref)
    return {} if ctx is None else {k: str(v) for k, v in ctx.values.items()}


def write_context(values: dict[str, Any], name: str = "dev", *, make_current: bool = True) -> Path:
    """Write one fleet's context. FLOTILLA_CONTEXT, when set, names the context or the file."""
    ref = os.environ.get("FLOTILLA_CONTEXT") or name
    path = context_file(ref)
    if not is_file_ref(ref):
        values = {"name": ref, **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(values, indent=2) + "\n")
    tmp.replace(path)
    if make_current and not is_file_ref(ref):
        pointer = _current_file()
        pointer.write_text(ref + "\n")
    return path


# -- the fleet's identity ------------------------------------------------------------------


async def fleet_identity(nc: NATS, subjects: Subjects) -> str | None:
    """`<jobs stream>@<its creation time>`: unique to one fleet's JetStream store; None when
    the server has no such stream (or no JetStream)."""
    from nats.errors import NoRespondersError
    from nats.js.errors import NotFoundError, ServiceUnavailableError

    try:
        info = await nc.jetstream(timeout=5).stream_info(subjects.jobs_stream)
    except (NotFoundError, ServiceUnavailableError, NoRespondersError):
        return None  # no such stream, or no JetStream at all
    created = info.created.isoformat() if info.created is not None else "unknown"
    return f"{subjects.jobs_stream}@{created}"


async def save_fleet_context(
    nc: NATS, settings: NatsSettings, extra: dict[str, Any], name: str = "dev",
    *, make_current: bool = True,
) -> Path:  # fmt: skip
    """Record the fleet `nc` is connected to (topology in place) as context `name`."""
    fleet_id = await fleet_identity(nc, Subjects(settings.prefix, settings.partitions))
    values = {"nats_url": settings.url, "prefix": settings.prefix, "fleet_id": fleet_id, **extra}
    return write_context(values, name, make_current=make_current)


async def verify_context(nc: NATS, ctx: Context, settings: NatsSettings) -> None:
    """Refuse (Unreachable) a server that does not answer as the context's fleet."""
    actual = await fleet_identity(nc, Subjects(settings.prefix, settings.partitions))
    if actual == ctx.fleet_id:
        return
    where = f"{ctx.label()} names the fleet at {redact(settings.url)}"
    if actual is None:
        why = f"the server there has no {Subjects(settings.prefix).jobs_stream} stream"
    else:
        why = f"the server there answers as another fleet ({actual}, not {ctx.fleet_id})"
    raise Unreachable(f"{where}, but {why}: {_START_HINT}")


_START_HINT = "start that fleet again (`flotilla dev`), or pick one with --context or --nats-url"


def gone(ctx: Context, url: str, detail: str) -> Unreachable:
    return Unreachable(
        f"{ctx.label()}: its fleet at {redact(url)} is gone (nothing answers: {detail}); "
        + _START_HINT
    )


def redact(url: str) -> str:
    """A URL with any password replaced by `***`."""
    return re.sub(r"(//[^/:@,]*):[^@/,]*@", r"\1:***@", url)


# -- resolution ----------------------------------------------------------------------------


@dataclass
class Target:
    """Where a command connects, and the context to check the server against (when the URL
    came from one)."""

    settings: NatsSettings
    context: Context | None = None
    inbox_prefix: str | None = None


def _flag(args: argparse.Namespace, name: str) -> str | None:
    value = getattr(args, name, None)
    return None if value in (None, "") else str(value)


def resolve(args: argparse.Namespace) -> Target:
    """Flags and environment (argparse defaults read the env) win over the context; a context
    applies when no URL is given, or when --context names one."""
    ref, url = _flag(args, "context"), _flag(args, "nats_url")
    ctx = load_context(ref) if (ref or url is None) else None
    from_ctx: dict[str, Any] = {}
    if ctx is not None:
        if url is None and not ctx.fleet_id:
            raise BadInput(
                f"{ctx.label()} records no fleet identity (written by an older flotilla), so "
                f"whether {redact(ctx.get('nats_url') or DEFAULT_URL)} is still its fleet cannot "
                "be checked: start `flotilla dev` again to rewrite it, or give --nats-url"
            )
        from_ctx = {k: ctx.get(k) for k in _SETTING_KEYS if ctx.get(k)}
        if ctx.get("nats_credentials"):  # the earlier name
            from_ctx.setdefault("credentials", ctx.get("nats_credentials"))
    values: dict[str, Any] = {
        "url": url or (ctx.get("nats_url") if ctx else None) or DEFAULT_URL,
        "prefix": _flag(args, "prefix") or (ctx.get("prefix") if ctx else None) or "flotilla",
        **from_ctx,
    }
    given = {f: _flag(args, flag) for f, flag in _AUTH_FLAGS.items() if _flag(args, flag)}
    if given:  # credentials from flags replace the context's as a whole
        values = {k: v for k, v in values.items() if k not in _SETTING_KEYS} | given
    check_auth(values)
    verify = ctx if (ctx is not None and url is None) else None
    inbox = _flag(args, "inbox_prefix") or (ctx.get("inbox_prefix") if ctx else None)
    return Target(NatsSettings(**values), verify, inbox)


_AUTH_FLAGS = {
    "credentials": "creds", "nkey_seed": "nkey", "user": "user", "password": "password",
    "tls_ca": "tlsca", "tls_cert": "tlscert", "tls_key": "tlskey",
}  # fmt: skip


def check_auth(values: dict[str, Any]) -> None:
    """One line naming the option for a combination or a file the connection cannot use."""
    if values.get("password") and not values.get("user"):
        raise BadInput("--password needs --user (or FLOTILLA_NATS_USER)")
    if values.get("tls_key") and not values.get("tls_cert"):
        raise BadInput("--tlskey needs --tlscert (or FLOTILLA_NATS_TLSCERT)")
    methods = [f for f in ("credentials", "nkey_seed", "user") if values.get(f)]
    if len(methods) > 1:
        names = {"credentials": "--creds", "nkey_seed": "--nkey", "user": "--user"}
        raise BadInput(f"give one of {', '.join(names[m] for m in methods)}, not several")
    for key, flag in (
        ("credentials", "--creds"), ("nkey_seed", "--nkey"), ("tls_ca", "--tlsca"),
        ("tls_cert", "--tlscert"), ("tls_key", "--tlskey"),
    ):  # fmt: skip
        path = values.get(key)
        if path and not os.access(path, os.R_OK):
            why = "no such file" if not os.path.exists(path) else "not readable"
            raise BadInput(f"{flag} {path}: {why}")


def nats_settings(args: argparse.Namespace) -> NatsSettings:
    """The settings alone (no context check): for callers that connect by other means."""
    return resolve(args).settings
