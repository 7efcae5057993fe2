"""Who runs the embedded PostgreSQL: ourselves, or a system user when we are root.

PostgreSQL refuses to run as root (initdb and postgres both exit). As root we therefore run it
as an unprivileged system user (default `flotilla-pg`), created with `useradd --system` when
missing, and switch to it with `setpriv` from util-linux (Essential on Debian). Doing it with an
argv prefix instead of `preexec_fn` or Popen's `user=` keeps it working on any event loop
(uvloop included). The data directory is handed to that user; what it cannot reach is placed
where it can (embedded_pgplace).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
from dataclasses import dataclass
from pathlib import Path

from control.devstack.proc import EmbeddedError

DEFAULT_SYSTEM_USER = "flotilla-pg"


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account PostgreSQL runs under; `prefix` goes in front of every argv."""

    uid: int
    gid: int
    prefix: tuple[str, ...] = ()
    #: The system user's name when root switches to it; None when we run it ourselves.
    name: str | None = None


async def _useradd(name: str) -> str:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    argv = [useradd, "--system", "--user-group", "--no-create-home"]
    argv += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return out.decode(errors="replace")


async def _system_user(name: str) -> pwd.struct_passwd:
    try:
        return await asyncio.to_thread(pwd.getpwnam, name)
    except KeyError:
        output = await _useradd(name)
    # Looked up again even if useradd failed: another process may have created it meanwhile.
    try:
        return await asyncio.to_thread(pwd.getpwnam, name)
    except KeyError:
        raise EmbeddedError(f"cannot create system user {name!r} for PostgreSQL", output) from None


async def resolve_run_as(system_user: str | None) -> RunAs:
    """Ourselves unless root; as root, `system_user` (created when missing)."""
    if os.geteuid() != 0:
        return RunAs(os.getuid(), os.getgid())
    entry = await _system_user(system_user or DEFAULT_SYSTEM_USER)
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    prefix = (setpriv, f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups")
    return RunAs(entry.pw_uid, entry.pw_gid, (*prefix, "--"), entry.pw_name)


def own_data_dir(path: Path, run_as: RunAs) -> None:
    """Make the (existing) data directory as PostgreSQL wants it: owned by its user, mode 0700."""
    if os.geteuid() == 0:
        os.chown(path, run_as.uid, run_as.gid)
    path.chmod(0o700)
