"""A NATS password rotated under a running daemon: the broker first, then the daemon's reload.

The broker (a real nats-server with users) re-reads its config with the node's new password and
cuts the old login off. The daemon keeps running and reconnecting, a job it holds keeps running;
on SIGHUP (Daemon.reload) with the new password in daemon.toml it reconnects on the same client:
it heartbeats again, the held job completes and is acked (never redelivered), and it pulls the
next job.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import nats
from nats.js import JetStreamContext

from control.topology import TopologySettings, ensure_topology
from daemon.app import Daemon
from daemon.config import DaemonConfig
from schemas.subjects import Subjects
from tests.support.authnats import AuthNatsServer, User
from tests.support.daemons import config, events, has, job, kinds, submit, until, write_config
from tests.support.heldmedia import CONNECT_TIMEOUT_S, HOST, READ_TIMEOUT_S, held_media

#: Longer than the rotation takes: a job is redelivered only if its daemon really went away.
ACK_WAIT = 120.0
HELD_MEDIA = {
    "http_hosts": [HOST],
    "http_allow_private": True,
    "http_connect_timeout": CONNECT_TIMEOUT_S,
    "http_read_timeout": READ_TIMEOUT_S,
}


def write(cfg: DaemonConfig, path: Path) -> None:
    write_config(cfg, path)
    media = "".join(f"{k} = {json.dumps(v)}\n" for k, v in HELD_MEDIA.items())
    with path.open("a") as f:
        f.write(f"[media]\n{media}")


async def nothing_pending(js: JetStreamContext, stream: str) -> bool:
    return all(c.num_ack_pending == 0 for c in await js.consumers_info(stream))


async def test_daemon_applies_a_rotated_password_on_reload(
    prefix: str, clip: Path, tmp_path: Path
) -> None:
    admin = User("admin", "admin-secret")
    server = AuthNatsServer(tmp_path / "nats", [admin, User("n1", "old-secret")])
    await server.start()
    nc = await nats.connect(server.url_of(admin))
    try:
        js = nc.jetstream(timeout=5)
        topo = TopologySettings(ack_wait=ACK_WAIT, pools=["cpu"], node_ttl=30.0)
        await ensure_topology(js, Subjects(prefix), topo)
        url = f"nats://127.0.0.1:{server.port}"
        nats_cfg = {"url": url, "prefix": prefix, "user": "n1", "password": "old-secret"}
        cfg = config(url, prefix, tmp_path / "n1", "n1", ack_wait=ACK_WAIT, media=HELD_MEDIA,
                     nats=nats_cfg)  # fmt: skip
        path = tmp_path / "n1.toml"
        write(cfg, path)
        async with held_media(clip) as media:
            d = Daemon(cfg, config_path=path)
            await d.start()
            try:
                await submit(js, prefix, media.transcode("held", tmp_path))
                await until(has(js, prefix, "held", "accepted"))
                await rotate(d, server, admin, js, prefix, cfg, path)
                link = d.backend.nc
                media.release(["held"])
                await until(has(js, prefix, "held", "completed"))
                await until(lambda: nothing_pending(js, f"{prefix.upper()}_JOBS"))
                assert kinds(await events(js, prefix, "held")).count("accepted") == 1
                # It pulls on: a job submitted after the rotation runs.
                await submit(js, prefix, job("after", clip, tmp_path / "after.mp4"))
                await until(has(js, prefix, "after", "completed"))
                assert d.backend.nc is link and not d.stopped.is_set()
            finally:
                await d.stop(force=True)
    finally:
        await nc.close()
        await server.stop()


async def rotate(
    d: Daemon, server: AuthNatsServer, admin: User, js: JetStreamContext, prefix: str,
    cfg: DaemonConfig, path: Path,
) -> None:  # fmt: skip
    link = d.backend.nc

    async def cut_off() -> bool:
        return not link.is_connected

    async def connected() -> bool:
        return link.is_connected

    # The broker first: the old login is cut off; the daemon keeps running and retrying.
    await server.reload([admin, User("n1", "new-secret")])
    await until(cut_off)
    assert not link.is_closed and not d.stopped.is_set()
    # The daemon's file, then its reload (SIGHUP): the same client logs in with the new one.
    new_nats = msgspec.structs.replace(cfg.nats, password="new-secret")
    write(msgspec.structs.replace(cfg, nats=new_nats), path)
    await d.reload()
    await until(connected)
    assert d.cfg.nats.password == "new-secret"
    # Heartbeats again: its node record is written anew.
    kv = await js.key_value(f"{prefix}_nodes")
    before = (await kv.get("n1")).revision or 0

    async def heartbeat() -> bool:
        return ((await kv.get("n1")).revision or 0) > before

    await until(heartbeat)
