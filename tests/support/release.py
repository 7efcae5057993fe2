"""The previous release's source tree, for a fleet that runs two releases side by side.

PREVIOUS_RELEASE is the last commit released before this one's protocol revision
(schemas.common.PROTOCOL); move it forward when a release ships. The tree comes out of this
repository's own history (`git archive`), so the test needs a full clone, as CI makes.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: Protocol 1: job ids fleet-wide, strict readers, no `capabilities.protocol`.
PREVIOUS_RELEASE = "cc27c86560ea1c2293145390367c2119950fa3e5"


async def extract_release(dest: Path, commit: str = PREVIOUS_RELEASE) -> Path:
    """Write the release's tracked files under `dest` and return it."""
    proc = await asyncio.create_subprocess_exec(
        "git", "-C", str(REPO), "archive", "--format=tar", commit,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"git archive {commit}: {err.decode(errors='replace').strip()}")
    await asyncio.to_thread(_untar, out, dest)
    return dest


def _untar(data: bytes, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
