"""A nats-server whose users hold permissions: what a producer restricted to its tenant meets.

The embedded server (control.devstack.nats) runs without authorization; tests that show what
the broker refuses start one of these, with the same JetStream settings and an `authorization`
block of users.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.errors
import nkeys  # type: ignore[import-untyped]
from nats.aio.client import Client as NATS

from control.devstack.nats import NatsServer, nats_server_binary, render_config
from control.devstack.proc import free_ports, spawn


@dataclass(frozen=True)
class User:
    name: str
    password: str
    #: Subjects the user may publish to and subscribe on; None: everything.
    publish: list[str] | None = None
    subscribe: list[str] | None = field(default_factory=lambda: ["_INBOX.>"])
    #: An NKey seed file: the user logs in with it (`name` is then its public key), not a password.
    seed_file: Path | None = None

    def render(self) -> str:
        entry = f"user: {json.dumps(self.name)}, password: {json.dumps(self.password)}"
        if self.seed_file is not None:
            entry = f"nkey: {json.dumps(self.name)}"
        if self.publish is None:
            return "{ " + entry + " }"
        perms = (
            f"publish: {{ allow: {json.dumps(self.publish)} }}, "
            f"subscribe: {{ allow: {json.dumps(self.subscribe or [])} }}"
        )
        return "{ " + entry + ", permissions: { " + perms + " } }"


class AuthNatsServer(NatsServer):
    def __init__(self, data_dir: Path, users: list[User]) -> None:
        super().__init__(data_dir, name="flotilla-auth")
        self.users = users

    def url_of(self, user: User) -> str:
        return f"nats://{user.name}:{user.password}@127.0.0.1:{self.port}"

    async def start(self, within: float = 20.0) -> None:
        if self._proc is not None and self._proc.returncode is None:
            return
        if not self.port:
            self.port, self.http_port = free_ports(2)
        conf = await self._write_config()
        self._proc = await spawn(
            [nats_server_binary(), "-c", str(conf)], self.log_path, self.data_dir
        )
        try:
            await self._wait_ready(self._proc, within)
        except BaseException:
            await self.kill()
            raise

    async def _write_config(self) -> Path:
        text = render_config(self.name, self.port, self.http_port, self.data_dir)
        users = "\n".join(f"    {u.render()}" for u in self.users)
        text += f"authorization {{\n  users = [\n{users}\n  ]\n}}\n"
        conf = self.data_dir / "nats-server.conf"
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(conf.write_text, text)
        return conf

    async def reload(self, users: list[User]) -> None:
        """Rewrite the users and have the running server re-read its config (SIGHUP, as
        `nats-server --signal reload` sends): clients whose login no longer holds are cut off.
        Returns once a login with each new user's password is accepted."""
        assert self._proc is not None and self._proc.returncode is None, "not running"
        self.users = users
        await self._write_config()
        self._proc.send_signal(signal.SIGHUP)
        for _ in range(200):  # bounded: the reload is applied within moments
            if all([await self.accepts(u) for u in users]):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"nats-server did not reload its users; see {self.log_path}")

    async def accepts(self, user: User) -> bool:
        """Whether a fresh login as `user` (its password or seed) is accepted now."""
        nc = NATS()
        try:
            login: dict[str, Any] = {"servers": [self.url_of(user)]}
            if user.seed_file is not None:
                login = {"servers": [self.url], "nkeys_seed": str(user.seed_file)}
            await nc.connect(
                **login, allow_reconnect=False, max_reconnect_attempts=1, connect_timeout=5,
                error_cb=_quiet,
            )  # fmt: skip
        except (nats.errors.Error, OSError, TimeoutError):  # refused: how depends on timing
            await nc.close()  # a refused first connect leaves its socket open
            return False
        await nc.close()
        return True


async def _quiet(exc: Exception) -> None:
    """A refused login is the answer sought, not news."""


def nkey_user(seed_file: Path) -> User:
    """A new NKey user: a fresh seed written to `seed_file` (replacing any), its public key."""
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    seed_file.write_bytes(seed)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    return User(public, "", seed_file=seed_file)
