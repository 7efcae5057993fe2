"""Rotated NATS credentials, applied to a live client (common.natsconn.apply_settings).

A real nats-server with users re-reads its config (SIGHUP) with a new password: the old login
is cut off. The service client keeps reconnecting instead of closing for good, takes on the new
password when given it, and a JetStream message fetched before the rotation still acks through
it. Both orders an operator may take: the server first, or the client first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, StreamConfig

from common.natsconn import NatsSettings, apply_settings, connect
from tests.support.authnats import AuthNatsServer, User, nkey_user


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(600):  # bounded: 60 s at worst
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def test_a_rotated_password_applies_without_a_new_client(tmp_path: Path) -> None:
    server = AuthNatsServer(tmp_path / "nats", [User("svc", "old-secret")])
    await server.start()
    try:
        settings = NatsSettings(
            url=f"nats://127.0.0.1:{server.port}", user="svc", password="old-secret"
        )
        nc = await connect(settings, name="rotation-test")
        try:
            await rotate_under(server, nc, settings)
        finally:
            await nc.close()
    finally:
        await server.stop()


async def rotate_under(server: AuthNatsServer, nc: Client, settings: NatsSettings) -> None:
    js = nc.jetstream(timeout=5)
    await js.add_stream(StreamConfig(name="ROT", subjects=["rot.>"]))
    for i in range(3):
        await js.publish(f"rot.{i}", b"x")
    sub = await js.pull_subscribe("rot.>", durable="w", config=ConsumerConfig(ack_wait=600))
    (held,) = await sub.fetch(1, timeout=10)
    assert not await apply_settings(nc, settings)  # nothing changed: nothing done

    # The server first: its reload cuts the old login off; the client keeps trying, not closed.
    await server.reload([User("svc", "new-secret")])
    assert not await server.accepts(User("svc", "old-secret"))
    await until(lambda: not nc.is_connected, "the server cut the old login off")
    assert not nc.is_closed
    settings = msgspec.structs.replace(settings, password="new-secret")
    assert await apply_settings(nc, settings)
    await until(lambda: nc.is_connected, "reconnected with the new password")
    # A message fetched before the rotation acks through the reconnected client.
    await held.ack_sync(timeout=10)
    (second,) = await sub.fetch(1, timeout=10)
    assert second.metadata.sequence.stream == 2
    await second.ack_sync(timeout=10)
    info = await js.consumer_info("ROT", "w")
    assert info.ack_floor.stream_seq == 2 and info.num_ack_pending == 0

    # The client first: it reconnects at once and is refused until the server takes it on too.
    reconnects = nc.stats["reconnects"]
    settings = msgspec.structs.replace(settings, password="newer-secret")
    assert await apply_settings(nc, settings)
    await until(lambda: not nc.is_connected, "reconnecting with the newer password")
    await server.reload([User("svc", "newer-secret")])
    await until(lambda: nc.is_connected, "connected once the server accepts the newer password")
    assert nc.stats["reconnects"] > reconnects and not nc.is_closed
    (third,) = await sub.fetch(1, timeout=10)
    await third.ack_sync(timeout=10)


async def test_settings_that_do_not_load_change_nothing(tmp_path: Path) -> None:
    server = AuthNatsServer(tmp_path / "nats", [User("svc", "secret")])
    await server.start()
    try:
        settings = NatsSettings(
            url=f"nats://127.0.0.1:{server.port}", user="svc", password="secret"
        )
        nc = await connect(settings, name="rotation-test")
        missing = str(tmp_path / "no-such-ca.pem")
        with pytest.raises(OSError):
            await apply_settings(nc, msgspec.structs.replace(settings, tls_ca=missing))
        assert nc.is_connected
        await nc.flush(timeout=5)
        # The same settings again are no change: the refused ones were never taken on.
        assert not await apply_settings(nc, settings)
        await nc.close()
    finally:
        await server.stop()


async def test_a_seed_file_rewritten_in_place_applies(tmp_path: Path) -> None:
    """An NKey seed rotated under the same file name: the reload sees the new contents."""
    seed_file = tmp_path / "node.nk"
    server = AuthNatsServer(tmp_path / "nats", [nkey_user(seed_file)])
    await server.start()
    try:
        settings = NatsSettings(url=f"nats://127.0.0.1:{server.port}", nkey_seed=str(seed_file))
        nc = await connect(settings, name="rotation-test")
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name="NK", subjects=["nk.>"]))
            await js.publish("nk.1", b"x")
            sub = await js.pull_subscribe("nk.>", durable="w", config=ConsumerConfig(ack_wait=600))
            (held,) = await sub.fetch(1, timeout=10)
            # A new key in the same file, then the broker takes it on in place of the old one.
            await server.reload([nkey_user(seed_file)])
            await until(lambda: not nc.is_connected, "the server cut the old key off")
            assert await apply_settings(nc, settings)  # same settings, new file contents
            await until(lambda: nc.is_connected, "reconnected with the new key")
            await held.ack_sync(timeout=10)
            assert (await js.consumer_info("NK", "w")).num_ack_pending == 0
        finally:
            await nc.close()
    finally:
        await server.stop()


async def test_a_login_in_the_url_rotates_with_the_url(tmp_path: Path) -> None:
    """`url = "nats://user:password@host"` (or a token as the user part) changes with the url."""
    server = AuthNatsServer(tmp_path / "nats", [User("svc", "old-secret")])
    await server.start()
    try:
        settings = NatsSettings(url=server.url_of(User("svc", "old-secret")))
        nc = await connect(settings, name="rotation-test")
        try:
            await server.reload([User("svc", "new-secret")])
            await until(lambda: not nc.is_connected, "the server cut the old login off")
            settings = NatsSettings(url=server.url_of(User("svc", "new-secret")))
            assert await apply_settings(nc, settings)
            await until(lambda: nc.is_connected, "reconnected with the new url")
            await nc.flush(timeout=5)
        finally:
            await nc.close()
    finally:
        await server.stop()
