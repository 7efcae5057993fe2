"""Where the embedded PostgreSQL's files go when its system user cannot reach them.

As root, PostgreSQL runs as a system user (see embedded_pguser), which must be able to search
every directory above its binaries and its cluster. A checkout in root's home (0700) or under a
`mktemp -d` directory is out of its reach. Rather than loosen the caller's own directories, what
that user needs is placed under a state directory it can reach (`/var/lib/<user>` by default):

- `pginstall-<digest>/`: a copy of the wheel's binaries (writable by root alone), one per
  build (keyed by the digest of its `postgres`), copied beside and renamed into place, so
  concurrent starts agree.
- `clusters/<key>/data`: the cluster of a data directory the user cannot reach. The data
  directory keeps a pointer file naming `<key>`, and `clusters/<key>/origin` names the data
  directory. A cluster lives exactly as long as its data directory: once that is deleted (by
  hand, `make clean`, a test's temporary directory), the next start of any embedded PostgreSQL
  removes the orphaned cluster, unless its postmaster still runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from control.devstack.proc import EmbeddedError, pid_alive

log = logging.getLogger(__name__)

#: The file in a data directory that names its relocated cluster.
POINTER = "relocated-cluster"
_KEY_CHARS = frozenset("0123456789abcdef")
#: The parts of the wheel's install that PostgreSQL reads at run time (not its headers).
_RUNTIME_PARTS = ("bin", "lib", "share")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where PostgreSQL's binaries are and where its cluster (PGDATA) is."""

    bin_dir: Path
    cluster_dir: Path


def blocked_dirs(path: Path, uid: int, gid: int) -> list[Path]:
    """Existing directories above `path` that the account (uid, gid) cannot search."""
    blocked = []
    for parent in sorted(p for p in path.resolve().parents if p.exists()):
        st = parent.stat()
        if st.st_uid == uid:
            ok = st.st_mode & stat.S_IXUSR
        elif st.st_gid == gid:
            ok = st.st_mode & stat.S_IXGRP
        else:
            ok = st.st_mode & stat.S_IXOTH
        if not ok:
            blocked.append(parent)
    return blocked


def reachable_state_dir(state_dir: Path, uid: int, gid: int) -> Path:
    """Create `state_dir` (root's, 0755) and check the account can reach it."""
    state_dir.mkdir(parents=True, exist_ok=True)
    st = state_dir.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
        # Someone else's directory (or a link) there could redirect what root writes.
        raise EmbeddedError(f"{state_dir} must be a directory owned by root")
    state_dir.chmod(0o755)
    if blocked := blocked_dirs(state_dir / "x", uid, gid):
        raise EmbeddedError(
            f"PostgreSQL's state directory {state_dir} is out of its user's reach "
            f"({', '.join(map(str, blocked))}); choose another one"
        )
    return state_dir


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _open_to_all(root: Path) -> None:
    """Readable (and, where the owner may, executable) by everyone; writable by root only."""
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        mode = 0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & stat.S_IXUSR else 0o644
        path.chmod(mode)


def copy_binaries(install: Path, state_dir: Path) -> Path:
    """The bin/ of a copy of `install` under `state_dir`, made once per build.

    The wheel's programs find their shared libraries through an RPATH relative to themselves
    (`$ORIGIN/../../../<package>.libs`), so the copy keeps the layout from site-packages down:
    `<package>/pginstall/{bin,lib,share}` beside `<package>.libs`.
    """
    package = install.parent
    inner = Path(package.name) / install.name
    final = state_dir / f"pginstall-{_digest(install / 'bin' / 'postgres')}"
    if not (final / inner / "bin" / "postgres").exists():
        tmp = state_dir / f".pginstall-{secrets.token_hex(6)}"
        try:
            (tmp / inner).mkdir(parents=True)
            for part in _RUNTIME_PARTS:
                shutil.copytree(install / part, tmp / inner / part, symlinks=True)
            libs = package.parent / f"{package.name}.libs"
            if libs.is_dir():
                shutil.copytree(libs, tmp / libs.name, symlinks=True)
            _open_to_all(tmp)
            try:
                tmp.rename(final)
            except OSError:  # another start placed the same build first
                if not (final / inner / "bin" / "postgres").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final / inner / "bin"


def _read_key(path: Path) -> str | None:
    try:
        key = path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError, UnicodeDecodeError):
        return None
    return key if len(key) == 16 and set(key) <= _KEY_CHARS else None


def _postmaster_runs(cluster: Path) -> bool:
    try:
        first = (cluster / "postmaster.pid").read_text().split("\n", 1)[0]
        return pid_alive(int(first))
    except (OSError, ValueError):
        return False


def sweep_orphans(state_dir: Path) -> list[Path]:
    """Remove the clusters whose data directory is gone (or points elsewhere); returns them."""
    clusters = state_dir / "clusters"
    if not clusters.is_dir():
        return []
    removed = []
    for entry in sorted(clusters.iterdir()):
        origin_file = entry / "origin"
        try:
            origin = Path(origin_file.read_text().strip())
        except (OSError, UnicodeDecodeError):
            origin = None
        # No origin yet: being created now (the pointer came first, the origin comes next).
        if origin is None or _read_key(origin / POINTER) == entry.name:
            continue
        if _postmaster_runs(entry / "data"):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        log.info("removed the embedded PostgreSQL cluster of %s (deleted)", origin)
    return removed


def place(install: Path, data_dir: Path, uid: int, gid: int, state_dir: Path) -> Placement:
    """Where PostgreSQL, run as (uid, gid) by root, finds its binaries and its cluster.

    In place when it can reach them; otherwise under `state_dir`. A data directory that was
    relocated once stays relocated, and one that already holds a cluster is never moved.
    """
    placement = Placement(install / "bin", data_dir)
    if state_dir.is_dir():
        sweep_orphans(state_dir)
    if blocked_dirs(install / "bin" / "postgres", uid, gid):
        bin_dir = copy_binaries(install, reachable_state_dir(state_dir, uid, gid))
        placement = Placement(bin_dir, placement.cluster_dir)
    if (data_dir / POINTER).exists() or (
        not (data_dir / "PG_VERSION").exists() and blocked_dirs(data_dir, uid, gid)
    ):
        cluster = relocated_cluster(data_dir, reachable_state_dir(state_dir, uid, gid))
        placement = Placement(placement.bin_dir, cluster)
    elif blocked := blocked_dirs(data_dir, uid, gid):
        raise EmbeddedError(
            f"the PostgreSQL cluster in {data_dir} is out of its user's reach "
            f"({', '.join(map(str, blocked))}); chmod o+x those directories or start afresh "
            "from an empty data directory"
        )
    return placement


def relocated_cluster(data_dir: Path, state_dir: Path) -> Path:
    """The cluster kept for `data_dir` under `state_dir`, created (empty) on first use."""
    pointer = data_dir / POINTER
    key = _read_key(pointer)
    if key is None:
        key = secrets.token_hex(8)
        # Pointer before the cluster: a sweep never sees a cluster its data directory disowns.
        tmp = data_dir / f".{POINTER}.tmp"
        tmp.write_text(key + "\n")
        os.replace(tmp, pointer)
    entry = state_dir / "clusters" / key
    entry.mkdir(parents=True, exist_ok=True)
    (entry / "origin").write_text(f"{data_dir.resolve()}\n")
    (entry / "data").mkdir(exist_ok=True)
    return entry / "data"
