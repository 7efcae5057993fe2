"""Outputs written under a temporary name and moved into place only when complete.

ffmpeg writes `.<name>.<tenant>.<job_id>.<attempt>.partial` (job_key) next to the final path
(same directory, so the rename is atomic on one filesystem); on success the file is fsynced,
hashed, renamed over the final name and the directory fsynced, so a reader sees either no file,
the previous one, or the whole new one. On any failure or cancellation the partials are removed.
A crash can still leave a partial behind: `stale_partials` finds them by (tenant, job id) for
the journal's recovery.

Before the first rename the attempt asks its gate (daemon.job.lease.Lease.may_commit) whether
another attempt may already have ended the job; if so, nothing is renamed (AlreadyEnded), so a
second run never replaces the file the first one's `completed` describes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from daemon.errors import DaemonError, JobError, ResourceExhausted
from daemon.media.paths import uri_of
from schemas.results import OutputFile

NAME_MAX = 255
_CHUNK = 1 << 20
#: True when the attempt may put its outputs in place (no other attempt ended the job).
CommitGate = Callable[[], Awaitable[bool]]


class AlreadyEnded(DaemonError):
    """Another attempt of this job (on any node) already ended it: this one commits nothing."""

    def __init__(self) -> None:
        super().__init__("the job already ended in another attempt; outputs left to it")


async def check_gate(gate: CommitGate | None) -> None:
    if gate is not None and not await gate():
        raise AlreadyEnded()


@dataclass(frozen=True, slots=True)
class Staged:
    final: Path
    partial: Path
    uri: str
    role: str


def job_key(tenant: str, job_id: str) -> str:
    """A job's name in file names: tenant and job id, `.` apart (no token holds one), so two
    tenants' jobs of one id never share a partial or scratch dir. A pair too long to leave room
    for the rest of a name is shortened with a hash of it (`~` marks that: no token holds one)."""
    key = f"{tenant}.{job_id}"
    if len(key) <= 120:
        return key
    return f"{key[:80]}~{hashlib.sha256(key.encode()).hexdigest()[:32]}"


def partial_path(final: Path, key: str, attempt: int) -> Path:
    """`key` is the job's job_key."""
    tail = f".{key}.{attempt}.partial"
    room = NAME_MAX - 1 - len(tail.encode())
    name = final.name.encode()[:room].decode(errors="ignore")  # never split a UTF-8 sequence
    return final.with_name(f".{name}{tail}")


def stale_partials(final: Path, key: str) -> list[Path]:
    """Partials any attempt of the job (its job_key) left next to `final` (blocking: call in a
    thread)."""
    probe = partial_path(final, key, 0)
    prefix = probe.name.removesuffix(".0.partial")
    with contextlib.suppress(OSError):
        return sorted(p for p in final.parent.glob(f"{_glob_escape(prefix)}.*.partial"))
    return []


class OutputSet:
    """The outputs of one attempt: `async with OutputSet(...) as outs:` then `stage`, `commit`."""

    def __init__(self, key: str, attempt: int, gate: CommitGate | None = None) -> None:
        """`key` is the job's job_key."""
        self._key, self._attempt, self._gate = key, attempt, gate
        self._staged: list[Staged] = []
        self._committed = False

    async def stage(self, final: Path, *, uri: str | None = None, role: str = "main") -> Path:
        """Create the parent directory and return the partial path ffmpeg should write."""
        partial = partial_path(final, self._key, self._attempt)
        try:
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise JobError(f"cannot create {final.parent}: {exc.strerror}") from exc
        self._staged.append(Staged(final, partial, uri or uri_of(final), role))
        return partial

    async def commit(self) -> list[OutputFile]:
        await check_gate(self._gate)
        files = []
        for item in self._staged:
            try:
                size, digest = await asyncio.to_thread(_seal, item.partial, item.final)
            except FileNotFoundError as exc:
                raise JobError(f"ffmpeg wrote no output for {item.uri}") from exc
            except OSError as exc:
                error = ResourceExhausted if exc.errno == 28 else JobError  # ENOSPC
                raise error(f"cannot finish output {item.uri}: {exc.strerror}") from exc
            files.append(OutputFile(uri=item.uri, size_bytes=size, sha256=digest, role=item.role))
        self._committed = True
        return files

    async def discard(self) -> None:
        if not self._committed:
            # Shielded: a second cancellation must not leave partials behind.
            await asyncio.shield(asyncio.to_thread(_remove, [s.partial for s in self._staged]))

    async def __aenter__(self) -> OutputSet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.discard()


def rename_dir_into_place(tmp: Path, dest: Path, what: str) -> None:
    """Move a finished output directory to `dest` (refused if `dest` appeared meanwhile and is
    not empty), then fsync the parent so the rename survives a crash."""
    try:
        os.rename(tmp, dest)
    except OSError as exc:
        raise JobError(f"cannot move the {what} into place: {exc.strerror}") from exc
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _seal(partial: Path, final: Path) -> tuple[int, str]:
    """fsync, hash and rename a finished partial; fsync the directory so the rename is durable."""
    digest = hashlib.sha256()
    size = 0
    with open(partial, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        os.fsync(f.fileno())
    os.replace(partial, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size, digest.hexdigest()


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)
