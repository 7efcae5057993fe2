"""A NATS password rotated under a running control plane: the broker first, then SIGHUP.

The broker (a real nats-server with users) cuts the old login off; the control plane keeps
reconnecting instead of closing for good, and its reload (control.reload, what SIGHUP runs) with
the new password in control.toml reconnects the same client: the API answers again.
"""

from __future__ import annotations

from pathlib import Path

import nats

from common.sdnotify import Notifier
from control.config import load_control_config
from control.reload import reload
from control.service import ControlPlane
from tests.support.authnats import AuthNatsServer, User
from tests.support.daemons import until


def control_toml(database_url: str, url: str, prefix: str, password: str) -> str:
    return (
        f'database_url = "{database_url}"\nmetrics_port = 0\n'
        f'[nats]\nurl = "{url}"\nprefix = "{prefix}"\nuser = "control"\n'
        f'password = "{password}"\n[topology]\npools = ["cpu"]\n'
    )


async def test_control_plane_applies_a_rotated_password_on_reload(
    prefix: str, database_url: str, tmp_path: Path
) -> None:
    admin = User("admin", "admin-secret")
    server = AuthNatsServer(tmp_path / "nats", [admin, User("control", "old-secret")])
    await server.start()
    url = f"nats://127.0.0.1:{server.port}"
    path = tmp_path / "control.toml"
    path.write_text(control_toml(database_url, url, prefix, "old-secret"))
    plane = ControlPlane(load_control_config(path))
    await plane.start()
    nc = await nats.connect(server.url_of(admin))
    try:
        link = plane.nc
        assert link is not None

        async def answers() -> bool:
            try:
                reply = await nc.request(f"{prefix}.api.fleet.summary", b"{}", timeout=2)
            except (TimeoutError, nats.errors.Error):
                return False
            return b"error" not in reply.data

        async def cut_off() -> bool:
            return not link.is_connected

        assert await answers()
        await server.reload([admin, User("control", "new-secret")])
        await until(cut_off)
        assert not link.is_closed and plane.healthy()
        path.write_text(control_toml(database_url, url, prefix, "new-secret"))
        await reload(plane.reload, path, Notifier({}), lambda: plane.nc)
        await until(answers)
        assert plane.nc is link and link.is_connected
        assert plane.cfg.nats.password == "new-secret"
    finally:
        await nc.close()
        await plane.stop()
        await server.stop()
