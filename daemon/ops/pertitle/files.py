"""A per-title ladder's output directory: rung files (and an HLS package) sealed into place.

Like the package operation, ffmpeg writes into a sibling temporary directory that is renamed to
`output` only when every encode succeeded. Rung files and playlists are reported with their
SHA-256 (hashed in chunks: a rung can be large); HLS segments are not listed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from daemon.errors import JobError
from daemon.media.paths import uri_of
from daemon.ops.outputs import rename_dir_into_place
from schemas.results import OutputFile

_CHUNK = 1 << 20


def rung_name(height: int) -> str:
    return f"{height}p.mp4"


def _digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    return size, digest.hexdigest()


def seal_ladder(tmp: Path, dest: Path) -> list[OutputFile]:
    """fsync and hash the rungs and playlists, then rename `tmp` to `dest` (blocking: call in a
    thread). Roles: `rung` (the top-level mp4 files), `master` and `playlist` (HLS)."""
    files = []
    for path in sorted(tmp.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(tmp)
        if path.suffix == ".mp4" and len(rel.parts) == 1:
            role = "rung"
        elif path.suffix == ".m3u8":
            role = "master" if rel.name == "master.m3u8" else "playlist"
        else:
            with open(path, "rb") as f:
                os.fsync(f.fileno())
            continue
        size, digest = _digest(path)
        files.append(OutputFile(uri=uri_of(dest / rel), size_bytes=size, sha256=digest, role=role))
    if not files:
        raise JobError("the per-title ladder wrote no rung")
    rename_dir_into_place(tmp, dest, "ladder")
    return files
