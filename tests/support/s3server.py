"""A real S3-compatible HTTP server on 127.0.0.1 for s3:// tests: moto's server, in a subprocess.

moto is an emulator of the S3 API (not AWS): it checks SigV4 signatures against the IAM users it
holds (when `auth` is on) and supports multipart uploads, user metadata and conditional puts; it
neither verifies nor keeps `x-amz-checksum-sha256`, and its authentication does not cover
presigned (query-signed) requests, so a server for presigned PUTs runs with authentication off
and accepts any signature. Its minimum
part size is lowered (`S3_UPLOAD_PART_MIN_SIZE`) so that a tiny file can go up in several parts.
The server is stopped by its process handle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PART_MIN = 1024
_POLICY = json.dumps({
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
})  # fmt: skip


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def client(self, secret: str | None = None) -> Any:
        """A boto3 S3 client of this server (blocking: call it in a thread)."""
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=secret or self.secret_access_key,
        )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, data: bytes | None = None) -> bytes:
    # text/plain: a form content type would leave the body to Flask's form parser, not `data`.
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "text/plain"})
    with urllib.request.urlopen(req, timeout=2) as resp:
        return bytes(resp.read())


def _provision(endpoint: str, buckets: Sequence[str], auth: bool) -> tuple[str, str]:
    """An IAM user allowed s3:*, its key, and the buckets; then authentication turned on."""
    import boto3

    anon = {"endpoint_url": endpoint, "region_name": "us-east-1",
            "aws_access_key_id": "bootstrap", "aws_secret_access_key": "bootstrap"}  # fmt: skip
    iam = boto3.client("iam", **anon)
    iam.create_user(UserName="flotilla")
    key = iam.create_access_key(UserName="flotilla")["AccessKey"]
    iam.put_user_policy(UserName="flotilla", PolicyName="s3", PolicyDocument=_POLICY)
    s3 = boto3.client("s3", **anon)
    for bucket in buckets:
        s3.create_bucket(Bucket=bucket)
    if auth:  # from here on every request must be signed with a key the server knows
        _get(f"{endpoint}/moto-api/reset-auth", data=b"0")
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@contextlib.asynccontextmanager
async def s3_server(
    tmp: Path, buckets: Sequence[str], *, auth: bool = True, within: float = 60.0
) -> AsyncIterator[S3Server]:
    """A moto S3 server with `buckets`, stopped (by its process) on exit."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = dict(os.environ, S3_UPLOAD_PART_MIN_SIZE=str(PART_MIN), MOTO_ALLOW_NONEXISTENT_REGION="1")
    log = await asyncio.to_thread((tmp / f"moto-{port}.log").open, "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port),
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env,
    )  # fmt: skip
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await asyncio.to_thread(_get, f"{endpoint}/moto-api/data.json")
                break
            except OSError:
                if proc.returncode is not None or loop.time() > deadline:
                    raise RuntimeError(f"moto server did not start (see {log.name})") from None
                await asyncio.sleep(0.2)
        key_id, secret = await asyncio.to_thread(_provision, endpoint, buckets, auth)
        yield S3Server(endpoint, key_id, secret)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await asyncio.to_thread(log.close)
