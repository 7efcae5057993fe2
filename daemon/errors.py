"""The daemon's error tree: one root, one class per thing a caller acts on.

    DaemonError
    ├── JobError              an attempt failed; `kind` drives the retry policy (daemon.job.retry)
    │   ├── InvalidJob        permanent: the job asks for something impossible or forbidden
    │   │   └── PathRefused   permanent: a URI outside the roots, a forbidden scheme, a trick path
    │   ├── InputError        permanent: ffmpeg cannot read the input (missing, corrupt, no stream)
    │   ├── EncoderError      transient: an encoder failed to open or run (encoder health counts it)
    │   ├── ResourceExhausted resource: disk full, out of memory
    │   └── JobTimeout        timeout: the hard timeout stopped ffmpeg
    └── JobCancelled          not a failure: someone asked this job to stop

Lower errors (OSError, ffmpeg exit codes, decode errors) are mapped to the most specific class with
`raise … from`, so the cause stays in the traceback while callers match on the class.
"""

from __future__ import annotations

from schemas.events import ErrorKind


class DaemonError(Exception):
    """Root of every error the daemon raises on purpose."""


class JobError(DaemonError):
    """One attempt of a job failed; the attributes end up in the `failed` event."""

    kind: ErrorKind = "transient"

    def __init__(
        self,
        reason: str,
        *,
        kind: ErrorKind | None = None,
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        if kind is not None:
            self.kind = kind
        self.exit_code = exit_code
        self.stderr_tail = stderr_tail

    def __str__(self) -> str:
        return self.reason


class InvalidJob(JobError):
    kind: ErrorKind = "permanent"


class PathRefused(InvalidJob):
    """A URI the node will not touch; raised before any process starts."""


class InputError(JobError):
    kind: ErrorKind = "permanent"


class EncoderError(JobError):
    """The encoder (not the input) failed: another encoder or node may succeed."""

    kind: ErrorKind = "transient"

    def __init__(
        self,
        reason: str,
        *,
        encoder: str,
        exit_code: int | None = None,
        stderr_tail: str = "",
    ) -> None:
        super().__init__(reason, exit_code=exit_code, stderr_tail=stderr_tail)
        self.encoder = encoder


class ResourceExhausted(JobError):
    kind: ErrorKind = "resource"


class JobTimeout(JobError):
    kind: ErrorKind = "timeout"


class JobCancelled(DaemonError):
    """The job was stopped on request (cancel, drain); report it as cancelled, never retry here."""

    def __init__(self, reason: str = "cancelled") -> None:
        super().__init__(reason)
        self.reason = reason
