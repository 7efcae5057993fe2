"""The chaos runner's network cut: a TCP proxy that really severs a link and lets it heal."""

from __future__ import annotations

import asyncio
import contextlib

from control.devstack.chaos.proxy import HOST, TcpProxy

LIMIT_S = 30.0


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), LIMIT_S)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), LIMIT_S)
    finally:
        writer.close()


async def test_a_cut_drops_open_links_and_refuses_new_ones_until_restored() -> None:
    server = await asyncio.start_server(_echo, HOST, 0)
    upstream = server.sockets[0].getsockname()[1]
    proxy = TcpProxy(lambda: (HOST, upstream))
    await proxy.start()
    try:
        assert await _round_trip(proxy.port, b"ping") == b"ping"

        reader, writer = await asyncio.open_connection(HOST, proxy.port)
        writer.write(b"held")
        assert await asyncio.wait_for(reader.read(1024), LIMIT_S) == b"held"
        proxy.sever()
        # The open link ends (EOF or reset), as a severed cable looks to the client.
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(1024), LIMIT_S) == b""
        writer.close()
        # A new connection is accepted and dropped at once: nothing comes back.
        with contextlib.suppress(ConnectionResetError):
            assert await _round_trip(proxy.port, b"during") == b""

        proxy.restore()
        assert await _round_trip(proxy.port, b"after") == b"after"
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()
