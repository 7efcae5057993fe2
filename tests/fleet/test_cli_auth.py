"""NATS authentication the way the `nats` role's broker wants it, from the CLI as a child
process: --user/--password (and FLOTILLA_NATS_USER/FLOTILLA_NATS_PASSWORD), a producer that hears
replies only on its own inbox prefix, and one-line errors for a refused login or permission.

A real nats-server with an `authorization` block (tests.support.authnats) and a real control
plane logged in as the fleet's user answer the commands."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest_asyncio

from common.natsconn import NatsSettings
from control.service import ControlPlane
from schemas.subjects import Subjects
from tests.support.authnats import AuthNatsServer, User
from tests.support.controlplane import control_config
from tests.support.devfleet import CliResult, run_cli

FLEET = User("fleet", "fleet-pw")


def producer(prefix: str) -> User:
    """A tenant's producer as the nats role renders it: the API, and its own inbox only."""
    return User(
        "acme", "acme-pw",
        publish=[f"{prefix}.api.>", Subjects(prefix).tenant_submits("acme")],
        subscribe=["_INBOX_acme.>"],
    )  # fmt: skip


@pytest_asyncio.fixture
async def broker(tmp_path: Path, prefix: str) -> AsyncIterator[AuthNatsServer]:
    server = AuthNatsServer(tmp_path / "nats-auth", [FLEET, producer(prefix)])
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest_asyncio.fixture
async def plane(broker: AuthNatsServer, prefix: str, database_url: str) -> AsyncIterator[None]:
    login = NatsSettings(url=broker.url, prefix=prefix, user=FLEET.name, password=FLEET.password)
    cfg = msgspec.structs.replace(control_config(broker.url, prefix, database_url), nats=login)
    control = ControlPlane(cfg)
    await control.start()
    try:
        yield
    finally:
        await control.stop()


def one_error_line(res: CliResult, code: int) -> str:
    assert res.rc == code, res
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flotilla: error: "), res.err
    return lines[0]


async def test_user_and_password_reach_the_api(
    broker: AuthNatsServer, plane: None, prefix: str
) -> None:
    base = ("--nats-url", broker.url, "--prefix", prefix)
    res = await run_cli("nodes", "--json", *base, "--user", FLEET.name, "--password", "fleet-pw")
    assert res.rc == 0 and json.loads(res.out) == {"nodes": []}, res
    # The same from the environment, as a unit's EnvironmentFile or a CI secret would set it.
    env = {"FLOTILLA_NATS_USER": FLEET.name, "FLOTILLA_NATS_PASSWORD": FLEET.password}
    line = one_error_line(await run_cli("drain", "ghost", *base, env=env), 4)
    assert "no node named 'ghost'" in line, line
    # A producer hears replies on its own inbox prefix only; with it, it is answered.
    acme = ("--user", "acme", "--password", "acme-pw")
    res = await run_cli("nodes", "--json", *base, *acme, "--inbox-prefix", "_INBOX_acme")
    assert res.rc == 0 and json.loads(res.out) == {"nodes": []}, res
    # Without it, the refusal is the error at once, with the way out.
    line = one_error_line(await run_cli("nodes", *base, *acme), 1)
    assert "NATS user 'acme' may not do this" in line and "subscription" in line, line
    assert "--inbox-prefix _INBOX_acme" in line, line


async def test_a_refused_login_is_one_line(broker: AuthNatsServer, prefix: str) -> None:
    base = ("--nats-url", broker.url, "--prefix", prefix)
    line = one_error_line(await run_cli("drain", "dev-1", *base), 1)
    assert "refused the login" in line and "--user/--password" in line, line
    res = await run_cli("drain", "dev-1", *base, "--user", FLEET.name, "--password", "wrong")
    line = one_error_line(res, 1)
    assert "refused the login: check --user/--password" in line, line
    # A password in the URL works as it always did, and never shows in an error.
    url = f"nats://{FLEET.name}:not-the-password@127.0.0.1:{broker.port}"
    res = await run_cli("nodes", "--nats-url", url, "--prefix", prefix)
    line = one_error_line(res, 1)
    assert "not-the-password" not in res.err and "fleet:***@" in line, line
