"""Remove the partial outputs a crashed attempt of a job left next to its final output.

A SIGKILLed node cannot clean up; whichever node completes the job (or the crashed node when it
restarts) removes every `.<name>.<tenant>.<job_id>.<attempt>.partial` so no partial output
remains; another tenant's job of the same id keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from daemon.errors import DaemonError
from daemon.media.paths import resolve_output
from daemon.ops.outputs import job_key, stale_partials
from schemas.jobs import JobSpec

log = logging.getLogger("flotilla.job")


def _remove(output: str, roots: list[str], key: str) -> int:
    final = resolve_output(output, [Path(r) for r in roots])
    removed = 0
    for path in stale_partials(final, key):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():  # a package's or ladder's directory
                shutil.rmtree(path)
            else:
                path.unlink()
            removed += 1
    return removed


async def remove_stale_partials(spec: JobSpec, roots: list[str]) -> int:
    """Best effort: a path that cannot be resolved or removed is logged, never raised."""
    if spec.output is None:
        return 0
    try:
        key = job_key(spec.tenant, spec.job_id)
        removed = await asyncio.to_thread(_remove, spec.output, roots, key)
    except (DaemonError, ValueError, OSError) as exc:
        log.debug("no partial cleanup for %s: %s", spec.job_id, exc)
        return 0
    if removed:
        log.info("removed %d stale partial output(s)", removed, extra={"job_id": spec.job_id})
    return removed
