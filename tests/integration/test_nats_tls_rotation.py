"""A broker certificate rotated to a new CA: the client's reload of its CA file applies.

A real nats-server requiring TLS re-reads its config (SIGHUP) with a certificate from a new CA;
a client that still trusts only the old CA cannot log in again. The service client, given the
new CA (in the same file, rewritten in place), reconnects on the same client and a JetStream
message it held acks through it.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import ssl
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from nats.js.api import ConsumerConfig, StreamConfig

from common.natsconn import NatsSettings, apply_settings, connect
from control.devstack.nats import NatsServer, render_config


def issue(directory: Path, name: str) -> tuple[bytes, Path, Path]:
    """A CA named `name` and a server certificate for 127.0.0.1 it signs: (CA PEM, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert_path, key_path


def tls_block(cert: Path, key: Path) -> str:
    return f'tls {{\n  cert_file: "{cert}"\n  key_file: "{key}"\n}}\n'


async def trusted_by(server: NatsServer, ca_file: Path) -> bool:
    """Whether the server's certificate verifies against `ca_file` alone now: its INFO, then
    the TLS handshake a NATS client makes (plain streams: nats-py's close can hang on a refused
    handshake)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await asyncio.wait_for(reader.readline(), 10)  # INFO {... "tls_required": true}
        await asyncio.wait_for(writer.start_tls(ctx, server_hostname="127.0.0.1"), 10)
    except ssl.SSLCertVerificationError:
        return False
    finally:
        writer.transport.abort()
    return True


async def until(check: Callable[[], bool], what: str) -> None:
    for _ in range(600):  # bounded: 60 s at worst
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never: {what}")


async def test_a_rotated_ca_file_applies_without_a_new_client(tmp_path: Path) -> None:
    pem1, cert1, key1 = issue(tmp_path, "one")
    pem2, cert2, key2 = issue(tmp_path, "two")
    ca_file, new_ca = tmp_path / "ca.pem", tmp_path / "ca-two.pem"
    ca_file.write_bytes(pem1)
    new_ca.write_bytes(pem2)
    server = NatsServer(tmp_path / "nats", name="flotilla-tls", extra_config=tls_block(cert1, key1))
    await server.start()
    try:
        settings = NatsSettings(url=server.url, tls_ca=str(ca_file))
        nc = await connect(settings, name="rotation-test")
        try:
            js = nc.jetstream(timeout=5)
            await js.add_stream(StreamConfig(name="TLS", subjects=["tls.>"]))
            await js.publish("tls.1", b"x")
            sub = await js.pull_subscribe("tls.>", durable="w", config=ConsumerConfig(ack_wait=600))
            (held,) = await sub.fetch(1, timeout=10)
            # The broker moves to the new CA's certificate: the old CA no longer verifies it.
            conf = tmp_path / "nats" / "nats-server.conf"
            text = render_config(server.name, server.port, server.http_port, server.data_dir)
            conf.write_text(text + tls_block(cert2, key2))
            assert server._proc is not None
            server._proc.send_signal(signal.SIGHUP)
            for _ in range(200):  # bounded: the reload is applied within moments
                if await trusted_by(server, new_ca):
                    break
                await asyncio.sleep(0.1)
            assert await trusted_by(server, new_ca) and not await trusted_by(server, ca_file)
            # The same CA file, rewritten with the new CA: the reload sees its new contents.
            reconnects = nc.stats["reconnects"]
            ca_file.write_bytes(pem2)
            assert await apply_settings(nc, settings)
            await until(lambda: nc.stats["reconnects"] > reconnects, "reconnected")
            await until(lambda: nc.is_connected, "connected over the new certificate")
            await held.ack_sync(timeout=10)
            assert (await js.consumer_info("TLS", "w")).num_ack_pending == 0
        finally:
            await nc.close()
    finally:
        await server.stop()
