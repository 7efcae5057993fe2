"""Who runs the embedded PostgreSQL: ourselves, or a system user when we are root.

PostgreSQL refuses to run as root (initdb and postgres both exit). As root we therefore run it
as an unprivileged system user (default `flotilla-pg`), created with `useradd --system` when
missing, and switch to it with `setpriv` from util-linux (Essential on Debian). Doing it with an
argv prefix instead of `preexec_fn` or Popen's `user=` keeps it working on any event loop
(uvloop included). The data directory is handed to that user; the directories above it must be
traversable by it, which is checked up front (a pytest or `mkdtemp` directory under a 0700
parent is not, so pick one under /tmp or /var/lib).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from control.embedded_proc import EmbeddedError

DEFAULT_SYSTEM_USER = "flotilla-pg"


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account PostgreSQL runs under; `prefix` goes in front of every argv."""

    uid: int
    gid: int
    prefix: tuple[str, ...] = ()


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


def _blocked_dirs(reach: list[Path], uid: int, gid: int) -> list[Path]:
    """Existing directories above `reach` that the account cannot search."""
    parents = sorted({p for path in reach for p in path.resolve().parents if p.exists()})
    blocked = []
    for path in parents:
        st = path.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            blocked.append(path)
    return blocked


async def resolve_run_as(system_user: str | None, reach: list[Path]) -> RunAs:
    """Ourselves unless root; as root, `system_user`, which must be able to reach `reach`."""
    if os.geteuid() != 0:
        return RunAs(os.getuid(), os.getgid())
    entry = await _system_user(system_user or DEFAULT_SYSTEM_USER)
    uid, gid = entry.pw_uid, entry.pw_gid
    blocked = await asyncio.to_thread(_blocked_dirs, reach, uid, gid)
    if blocked:
        raise EmbeddedError(
            f"PostgreSQL runs as {entry.pw_name!r} because root is refused, and that user "
            f"cannot enter {', '.join(map(str, blocked))}; choose a data directory it can "
            "reach (for example under /tmp or /var/lib) or chmod o+x those directories"
        )
    setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
    prefix = (setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--")
    return RunAs(uid, gid, prefix)


def own_data_dir(path: Path, run_as: RunAs) -> None:
    """Make the (existing) data directory as PostgreSQL wants it: owned by its user, mode 0700."""
    if os.geteuid() == 0:
        os.chown(path, run_as.uid, run_as.gid)
    path.chmod(0o700)
