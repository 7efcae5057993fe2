"""A callback URL cannot make the control plane reach its own network, and never goes unsigned.

The attacker is a tenant who sets `callback_url` and reads the `webhook` rows of their job's
events. Non-public targets are refused before any connection (a real listener on loopback
proves nothing arrived), and what the tenant reads is the same word whatever the target was:
no address, no port, no open/closed difference. The operator's log keeps the detail.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from control.api import tenants
from control.api.jobquery import job_events
from control.config import WebhookSettings
from control.webhooks import WebhookSender
from control.webhooks.signing import SecretUnavailable
from tests.support.webhooks import Receiver, finished_job, signed_by


@pytest_asyncio.fixture
async def rx() -> AsyncIterator[Receiver]:
    receiver = Receiver([200])
    await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()


async def _closed_port() -> int:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(probe.sockets[0].getsockname()[1])
    probe.close()
    await probe.wait_closed()
    return port


def _attacks(port: int, closed: int) -> dict[str, str]:
    """Callback URLs a tenant might try; `port` has a live listener, `closed` has none."""
    return {
        "loopback": f"http://127.0.0.1:{port}/metrics",
        "loopback-closed": f"http://127.0.0.1:{closed}/metrics",
        "loopback-short": f"http://127.1:{port}/",
        "loopback-decimal": f"http://2130706433:{port}/",
        "unspecified": f"http://0.0.0.0:{port}/",
        "name-to-loopback": f"http://localhost:{port}/",
        "ipv6-loopback": f"http://[::1]:{port}/",
        "ipv4-mapped": f"http://[::ffff:127.0.0.1]:{port}/",
        "rfc1918-10": "http://10.0.0.1/",
        "rfc1918-172": "http://172.16.5.4:8080/",
        "rfc1918-192": "https://192.168.1.1/",
        "link-local": "http://169.254.10.10/",
        "metadata": "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "ipv6-ula": "http://[fd00::1]/",
        "ipv6-link-local": "http://[fe80::1]/",
        "nat64-loopback": "http://[64:ff9b::7f00:1]/",
        "credentials": f"http://user:pw@127.0.0.1:{port}/",
        "file": "file:///etc/passwd",
        "gopher": f"gopher://127.0.0.1:{port}/_x",
    }


async def test_non_public_callbacks_are_refused_without_a_connection(
    db: asyncpg.Pool, rx: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await _closed_port()
    attacks = _attacks(rx.port, closed)
    for name, url in attacks.items():
        await finished_job(db, f"ssrf-{name}", url, "default")
    sender = WebhookSender(db, WebhookSettings(backoff=0.0))
    with caplog.at_level(logging.WARNING, logger="flotilla.webhooks"):
        assert await sender.tick() == len(attacks)
        assert await sender.tick() == 0  # refused is final: no retry
    assert rx.connections == 0 and rx.got == []

    for name in attacks:
        events = await job_events(db, "default", f"ssrf-{name}")
        [hook] = [e.body for e in events.events if e.kind == "webhook"]
        # Every target reads the same: open and closed ports, names and addresses alike.
        assert hook == {"attempt": 1, "status": None, "error": "refused", "delivered": False,
                        "final": True}, name  # fmt: skip
    # The operator's log says why, one line per refusal, without a traceback.
    lines = [r for r in caplog.records if r.name == "flotilla.webhooks"]
    assert len(lines) == len(attacks)
    assert all(r.exc_info is None for r in lines)
    metadata = [r.getMessage() for r in lines if "ssrf-metadata " in r.getMessage()]
    assert len(metadata) == 1 and "169.254.169.254" in metadata[0]


async def test_allow_listed_name_gets_a_pinned_signed_post(db: asyncpg.Pool, rx: Receiver) -> None:
    secret = await tenants.create_tenant(db, "acme")
    await finished_job(db, "ok-1", f"http://LocalHost:{rx.port}/hook", "acme")
    sender = WebhookSender(db, WebhookSettings(allow_hosts=["localhost"]))
    assert await sender.tick() == 1
    [(headers, body)] = rx.got
    assert signed_by(secret, headers, body)
    assert headers["host"] == f"localhost:{rx.port}"  # the name, though the address was pinned
    events = await job_events(db, "acme", "ok-1")
    [hook] = [e.body for e in events.events if e.kind == "webhook"]
    assert (hook["status"], hook["delivered"], hook["error"]) == (200, True, None)


async def test_tenant_without_a_row_is_signed_with_the_fleet_secret(
    db: asyncpg.Pool, rx: Receiver
) -> None:
    await finished_job(db, "fleet-1", f"http://127.0.0.1:{rx.port}/", "no-such-tenant")
    sender = WebhookSender(db, WebhookSettings(allow_hosts=["127.0.0.1"]))
    assert await sender.tick() == 1
    fleet = await db.fetchval("SELECT secret FROM webhook_fleet_secret")
    assert isinstance(fleet, str) and len(fleet) >= 32
    [(headers, body)] = rx.got
    assert signed_by(fleet, headers, body)
    # A second instance (say, after a restart) signs with the same secret, not a new one.
    other = WebhookSender(db, WebhookSettings())
    assert await other.secrets.fleet() == fleet
    assert await db.fetchval("SELECT count(*) FROM webhook_fleet_secret") == 1


async def test_fleet_secret_from_a_file(db: asyncpg.Pool, rx: Receiver, tmp_path: Path) -> None:
    path = tmp_path / "webhook.secret"
    await asyncio.to_thread(path.write_text, "s" * 40 + "\n")
    await finished_job(db, "file-1", f"http://127.0.0.1:{rx.port}/", "no-such-tenant")
    sender = WebhookSender(db, WebhookSettings(allow_hosts=["127.0.0.1"], secret_file=str(path)))
    assert await sender.tick() == 1
    [(headers, body)] = rx.got
    assert signed_by("s" * 40, headers, body)


async def test_no_usable_secret_means_nothing_is_sent(
    db: asyncpg.Pool, rx: Receiver, tmp_path: Path
) -> None:
    path = tmp_path / "short.secret"
    await asyncio.to_thread(path.write_text, "too-short")
    await finished_job(db, "nosig-1", f"http://127.0.0.1:{rx.port}/", "no-such-tenant")
    settings = WebhookSettings(allow_hosts=["127.0.0.1"], secret_file=str(path))
    with pytest.raises(SecretUnavailable, match="fewer than 32"):
        await WebhookSender(db, settings).tick()
    await finished_job(db, "nosig-2", f"http://127.0.0.1:{rx.port}/", "no-such-tenant")
    missing = WebhookSettings(allow_hosts=["127.0.0.1"], secret_file=str(tmp_path / "none"))
    with pytest.raises(SecretUnavailable, match="none"):
        await WebhookSender(db, missing).tick()
    assert rx.connections == 0
    assert await db.fetchval("SELECT sum(attempts) FROM webhook_deliveries") == 0


async def test_redirect_is_a_failure_and_not_followed(db: asyncpg.Pool) -> None:
    await tenants.create_tenant(db, "acme")
    rx = Receiver([302], location="http://169.254.169.254/latest/meta-data/")
    await rx.start()
    try:
        await finished_job(db, "redir-1", f"http://127.0.0.1:{rx.port}/", "acme")
        sender = WebhookSender(db, WebhookSettings(allow_hosts=["127.0.0.1"], max_attempts=1))
        assert await sender.tick() == 1
    finally:
        await rx.stop()
    assert len(rx.got) == 1
    events = await job_events(db, "acme", "redir-1")
    [hook] = [e.body for e in events.events if e.kind == "webhook"]
    assert (hook["error"], hook["delivered"], hook["final"]) == ("http 302", False, True)


async def test_only_the_status_line_is_read(db: asyncpg.Pool) -> None:
    await tenants.create_tenant(db, "acme")
    rx = Receiver([204], hold=True)  # a status line, then silence: no headers, no end
    await rx.start()
    try:
        await finished_job(db, "hold-1", f"http://127.0.0.1:{rx.port}/", "acme")
        # Were the headers or body awaited, this attempt would end as a timeout instead.
        sender = WebhookSender(db, WebhookSettings(allow_hosts=["127.0.0.1"], timeout=60.0))
        assert await sender.tick() == 1
    finally:
        await rx.stop()
    events = await job_events(db, "acme", "hold-1")
    [hook] = [e.body for e in events.events if e.kind == "webhook"]
    assert (hook["status"], hook["delivered"]) == (204, True)


async def _self_signed(tmp_path: Path, name: str) -> Path:
    """A certificate for `name` (a DNS name only, no IP address), made with the openssl tool."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    proc = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}",
        "-addext", f"subjectAltName=DNS:{name}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return cert


async def test_https_verifies_the_url_host_while_connecting_to_the_pinned_address(
    db: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert = await _self_signed(tmp_path, "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    await asyncio.to_thread(server_ctx.load_cert_chain, cert, tmp_path / "key.pem")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client trusts this certificate only
    await tenants.create_tenant(db, "acme")
    rx = Receiver([200])
    await rx.start(tls=server_ctx)
    try:
        await finished_job(db, "tls-name", f"https://localhost:{rx.port}/", "acme")
        # The same server by address: the certificate names no address, so it must not verify.
        await finished_job(db, "tls-addr", f"https://127.0.0.1:{rx.port}/", "acme")
        settings = WebhookSettings(allow_hosts=["localhost", "127.0.0.1"], max_attempts=1)
        assert await WebhookSender(db, settings).tick() == 2
    finally:
        await rx.stop()
    assert len(rx.got) == 1 and "localhost" in rx.sni
    outcomes = {}
    for job_id in ("tls-name", "tls-addr"):
        events = await job_events(db, "acme", job_id)
        [hook] = [e.body for e in events.events if e.kind == "webhook"]
        outcomes[job_id] = (hook["delivered"], hook["error"])
    assert outcomes == {"tls-name": (True, None), "tls-addr": (False, "unreachable")}
