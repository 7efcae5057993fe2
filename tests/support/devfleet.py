"""A real dev fleet for CLI tests, and a way to run the real `flotilla` command against it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from common.natsconn import NatsSettings
from control.cli.apiclient import ApiClient
from control.devstack.fleet import DevFleet, NodeSettings
from schemas import api


@dataclass(frozen=True)
class CliResult:
    rc: int
    out: str
    err: str


async def run_cli(
    *args: str, env: dict[str, str] | None = None, limit_s: float = 120.0
) -> CliResult:
    """Run `python -m control ARGS` (the installed `flotilla`) as a child process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "control",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    except BaseException:  # timed out, or the caller gave up on it: leave no process behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


async def wait_nodes(fleet: DevFleet, count: int, limit_s: float = 90.0) -> list[api.NodeInfo]:
    """Until `count` nodes report online through the API (or fail after `limit_s`)."""
    deadline = time.monotonic() + limit_s
    nodes: list[api.NodeInfo] = []
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as client:
        while time.monotonic() < deadline:
            assert not fleet.failed(), fleet.failed()
            try:
                reply = await client.call("node.list", api.EmptyRequest(), api.NodeListReply)
                nodes = [n for n in reply.nodes if n.state == "online"]
            except Exception:  # the control plane may still be starting
                nodes = []
            if len(nodes) >= count:
                return nodes
            await asyncio.sleep(0.5)
    raise AssertionError(f"only {len(nodes)} of {count} nodes came online in {limit_s}s")


@asynccontextmanager
async def open_dir(prefix: str) -> AsyncIterator[Path]:
    """A temp dir (with `out/`) other users can enter: Postgres runs as another user under root."""
    path = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix=prefix))
    await asyncio.to_thread(path.chmod, 0o755)
    (path / "out").mkdir()
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def _print_logs(fleet: DevFleet) -> None:
    for log in sorted(fleet.data_dir.glob("*.log")):
        text = await asyncio.to_thread(log.read_text, errors="replace")
        print(f"--- {log.name}\n{text[-3000:]}")


@asynccontextmanager
async def dev_fleet(
    data_dir: Path,
    nodes: int,
    roots: list[Path],
    node_settings: NodeSettings | None = None,
    ack_wait: float | None = None,
    shares: dict[str, dict[str, float]] | None = None,
) -> AsyncIterator[DevFleet]:
    """A started DevFleet whose context file lives in `data_dir` (FLOTILLA_CONTEXT is set);
    `ack_wait`: how soon a crashed node's jobs are redelivered (default DevFleet's)."""
    context = data_dir / "context.json"
    previous = os.environ.get("FLOTILLA_CONTEXT")
    os.environ["FLOTILLA_CONTEXT"] = str(context)  # never the operator's own context file
    fleet = DevFleet(
        data_dir / "fleet", nodes=nodes, roots=roots, node_settings=node_settings or NodeSettings(),
        shares=shares or {},
    )  # fmt: skip
    if ack_wait is not None:
        fleet.ack_wait = ack_wait
    try:
        try:
            await fleet.start()
            await wait_nodes(fleet, nodes)
        except Exception:  # the fleet did not come up: show why
            await _print_logs(fleet)
            raise
        yield fleet
    finally:
        await fleet.stop(grace=20.0)
        if previous is None:
            os.environ.pop("FLOTILLA_CONTEXT", None)
        else:
            os.environ["FLOTILLA_CONTEXT"] = previous
