"""ffmpeg's stderr: a bounded tail for failed events, and the exit → error classification.

ffmpeg runs with `-loglevel level+info`, so its lines carry `[error]` / `[fatal]` tags; the reason
we report is the first line that matches a known cause, else the first fatal, else the first error.
"""

from __future__ import annotations

import re
import signal
from collections import deque

from daemon.errors import EncoderError, InputError, InvalidJob, JobError, ResourceExhausted

MAX_LINE = 1000
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")

# Order matters: the first table row that matches any line decides the class.
_INPUT = (
    "no such file or directory",
    "invalid data found when processing input",
    "does not contain any stream",
    "matches no streams",
    "protocol not found",
    "not on whitelist",
    "not in whitelist",
    "moov atom not found",
    "error opening input",
)
_ENCODER = (
    "cannot load",
    "no nvenc capable devices",
    "initializeencoder failed",
    "openencodesessionex failed",
    "error initializing output stream",
    "error while opening encoder",
    "could not open encoder",
    "unknown encoder",
    "failed to initialise vaapi",
    "error creating a mfx session",
    "device creation failed",
)
_RESOURCE = ("no space left on device", "cannot allocate memory", "out of memory")
#: A hardware encoder that cannot open a session: NVENC's session cap ("OpenEncodeSessionEx
#: failed: out of memory (10)" on a GeForce past its 3-8 sessions) or its GPU memory. The node
#: is not out of memory: another encoder (software) or node can run the job, so these are
#: encoder errors (fallback, encoder health), never `resource`.
_HW_SESSION = (
    "openencodesessionex failed",
    "createbitstreambuffer failed",
    "cuctxcreate",
    "no capable devices found",
    "no nvenc capable devices",
)
_HW_SUFFIXES = ("_nvenc", "_qsv", "_vaapi")
#: A static ffmpeg loads its VA/oneVPL/CUDA libraries lazily; one that is missing aborts it
#: (SIGABRT from implib-gen's stub: "failed to load library 'libva-drm.so.2'") or fails its
#: device open ("Cannot load libcuda.so.1").
_HW_LIBRARY = ("failed to load library", "cannot open shared object file", "cannot load lib")
_CONTAINER = ("not currently supported in container", "could not find tag for codec")


class StderrTail:
    """The last `max_lines` lines, at most `max_bytes` characters in all, each line bounded."""

    def __init__(self, max_lines: int = 40, max_bytes: int = 8192) -> None:
        self._lines: deque[str] = deque(maxlen=max_lines)
        self._max_bytes = max_bytes
        #: Early error lines survive a chatty end (x264 prints stats after a failure elsewhere).
        self.first_errors: list[str] = []

    def add(self, line: str) -> None:
        line = line.rstrip()[:MAX_LINE]
        if not line:
            return
        self._lines.append(line)
        if len(self.first_errors) < 8 and ("[error]" in line or "[fatal]" in line):
            self.first_errors.append(line)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def text(self) -> str:
        return "\n".join(self._lines)[-self._max_bytes :]


def classify(exit_code: int, tail: StderrTail, *, encoder: str | None) -> JobError:
    """The error for an ffmpeg that exited non-zero on its own (not stopped by us)."""
    text = tail.text()
    lines = tail.first_errors + tail.lines
    # A driver library that will not load: this encoder cannot run here, another can.
    hardware = encoder if encoder is not None and encoder.endswith(_HW_SUFFIXES) else None
    if hardware is not None and (found := _find(lines, _HW_LIBRARY)):
        how = f" (ffmpeg killed by {_signal_name(-exit_code)})" if exit_code < 0 else ""
        return EncoderError(found + how, encoder=hardware, exit_code=exit_code, stderr_tail=text)
    if exit_code < 0:
        name = _signal_name(-exit_code)
        return JobError(f"ffmpeg was killed by {name}", exit_code=exit_code, stderr_tail=text)
    if encoder is not None and (found := _hardware_session(lines, encoder)):
        return EncoderError(found, encoder=encoder, exit_code=exit_code, stderr_tail=text)
    if found := _find(lines, _RESOURCE):
        return ResourceExhausted(found, exit_code=exit_code, stderr_tail=text)
    if found := _find(lines, _CONTAINER):
        return InvalidJob(found, exit_code=exit_code, stderr_tail=text)
    # An input that never opened is the input's fault whatever followed; once it opened, an
    # encoder line wins (a missing VAAPI device also says "No such file or directory").
    opened = _find(lines, ("error opening input",)) is None
    if not opened and (found := _find(lines, _INPUT)):
        return InputError(found, exit_code=exit_code, stderr_tail=text)
    if encoder is not None and (found := _find(lines, _ENCODER)):
        return EncoderError(found, encoder=encoder, exit_code=exit_code, stderr_tail=text)
    if found := _find(lines, _INPUT):
        return InputError(found, exit_code=exit_code, stderr_tail=text)
    reason = _first_tagged(lines) or f"ffmpeg exited with code {exit_code}"
    return JobError(reason, exit_code=exit_code, stderr_tail=text)


def _hardware_session(lines: list[str], encoder: str) -> str | None:
    """The first line saying a hardware encoder could not get a session or its memory: a
    session-open failure, or an out-of-memory line the encoder itself logged."""
    if not encoder.endswith(_HW_SUFFIXES):
        return None  # a software encoder out of memory is the host's: `resource`
    if found := _find(lines, _HW_SESSION):
        return found
    own = [line for line in lines if f"{encoder} @" in line]
    return _find(own, _RESOURCE)


def clean(line: str) -> str:
    """A line fit for a one-line reason: no pointer addresses, no level tags."""
    line = _ADDRESS.sub("", line)
    return line.replace("[error] ", "").replace("[fatal] ", "").strip()[:500]


def _find(lines: list[str], needles: tuple[str, ...]) -> str | None:
    for needle in needles:
        for line in lines:
            if needle in line.lower():
                return clean(line)
    return None


def _first_tagged(lines: list[str]) -> str | None:
    for tag in ("[fatal]", "[error]"):
        for line in lines:
            if tag in line:
                return clean(line)
    return None


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
