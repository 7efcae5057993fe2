"""A small HTTP server on 127.0.0.1 for http(s):// input tests."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field


@dataclass
class Server:
    body: bytes
    port: int = 0
    hits: dict[str, int] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = head.split(b" ", 2)[1].decode()
            self.hits[path] = self.hits.get(path, 0) + 1
            await self.respond(path, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def respond(self, path: str, w: asyncio.StreamWriter) -> None:
        def head(status: str, *lines: str) -> None:
            w.write(("\r\n".join([f"HTTP/1.1 {status}", *lines]) + "\r\n\r\n").encode())

        body = self.body
        match path:
            case "/clip.mp4":
                head("200 OK", f"Content-Length: {len(body)}")
                w.write(body)
            case "/chunked.mp4":
                head("200 OK", "Transfer-Encoding: chunked")
                for at in range(0, len(body), 7000):
                    part = body[at : at + 7000]
                    w.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                w.write(b"0\r\n\r\n")
            case "/flaky.mp4" if self.hits[path] <= 2:
                head("503 Busy", "Content-Length: 0")
            case "/flaky.mp4":
                head("200 OK", f"Content-Length: {len(body)}")
                w.write(body)
            case "/always500":
                head("500 Oops", "Content-Length: 0")
            case "/stall":
                head("200 OK", "Content-Length: 1000")
                await w.drain()
                await asyncio.sleep(3)
            case "/redirect-ok":
                head("302 Found", "Location: /clip.mp4", "Content-Length: 0")
            case "/redirect-evil":
                head("302 Found", "Location: http://evil.example/x.mp4", "Content-Length: 0")
            case "/redirect-ip":
                head("301 Moved", f"Location: http://127.0.0.2:{self.port}/clip.mp4")
            case "/redirect-file":
                head("302 Found", "Location: file:///etc/passwd", "Content-Length: 0")
            case "/loop":
                head("302 Found", "Location: /loop", "Content-Length: 0")
            case "/short":
                head("200 OK", "Content-Length: 1000")
                w.write(b"x" * 10)  # then the connection closes: a broken-off body
            case "/huge":
                head("200 OK", "Content-Length: 1000000000000")
            case "/liar":
                head("200 OK")  # no length: read until close, which goes past the cap
                w.write(b"\0" * 300_000)
            case "/gzip":
                head("200 OK", "Content-Encoding: gzip", "Content-Length: 3")
                w.write(b"abc")
            case _:
                head("404 Not Found", "Content-Length: 0")
        await w.drain()
