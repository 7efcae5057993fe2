"""Run one ffmpeg process: argv, progress from stdout, bounded stderr tail, stop on request.

Never a shell: the argv is built from validated values only. ffmpeg starts in its own session
(process group), so pause/stop signals reach it and its children only, and it dies with the
daemon (see `daemon.ffmpeg.proc.child_options`). A graceful stop is SIGINT (stdin is closed by
`-nostdin`, so `q` is not an option): ffmpeg finishes its trailer and exits; after
`control.grace_s` the group gets SIGKILL. Whatever happens (including the calling task being
cancelled), no ffmpeg outlives this call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from daemon.errors import JobCancelled, JobError, JobTimeout
from daemon.ffmpeg.proc import child_options, expendable, signal_group
from daemon.ffmpeg.progress import Duration, ProgressParser, ProgressUpdate, Throttle
from daemon.ffmpeg.stderr import MAX_LINE, StderrTail, classify
from daemon.job.handle import JobHandle

__all__ = ["BASE_ARGS", "ProgressSink", "RunResult", "ffmpeg_argv", "run_ffmpeg"]

log = logging.getLogger("flotilla.runner")
ProgressSink = Callable[[ProgressUpdate], Awaitable[None]]
#: Level tags on stderr lines let errors be told from chatter (see daemon.ffmpeg.stderr).
BASE_ARGS: tuple[str, ...] = ("-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info")
BASE_ARGS += ("-progress", "pipe:1", "-y")
_READ_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class RunResult:
    argv: list[str]
    wall_seconds: float
    last: ProgressUpdate | None
    stderr_tail: str


def ffmpeg_argv(ffmpeg: str, args: Sequence[str]) -> list[str]:
    return [ffmpeg, *BASE_ARGS, *args]


async def run_ffmpeg(
    ffmpeg: str,
    args: Sequence[str],
    *,
    control: JobHandle,
    on_progress: ProgressSink | None = None,
    duration_s: Duration = None,
    span: tuple[float, float] = (0.0, 100.0),
    progress_interval: float = 1.0,
    encoder: str | None = None,
    env: Mapping[str, str] | None = None,
    on_stderr: Callable[[str], None] | None = None,
) -> RunResult:
    """Run to completion; raise JobError (classified), JobTimeout or JobCancelled otherwise.

    `span` places this run on the job's 0..100 scale (two passes: 0-50, 50-100); `encoder` names
    the encoder an EncoderError is about; `env` adds variables (library log levels);
    `on_stderr` sees every stderr line, for reports longer than the tail keeps.
    """
    await control.ready()
    argv = ffmpeg_argv(ffmpeg, args)
    log.debug("ffmpeg argv: %r", argv)
    started = time.monotonic()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env} if env else None,
            **child_options(),
        )
    except OSError as exc:
        raise JobError(f"cannot start ffmpeg {ffmpeg!r}: {exc.strerror or exc}") from exc
    expendable(proc.pid)
    assert proc.stdout is not None and proc.stderr is not None
    tail = StderrTail()
    pump = _ProgressPump(ProgressParser(duration_s, span), on_progress, progress_interval)
    readers = [
        asyncio.create_task(pump.run(proc.stdout)),
        asyncio.create_task(_collect(proc.stderr, tail, on_stderr)),
    ]
    control.attach(proc.pid)
    try:
        stopped = await _supervise(proc, control)
    finally:
        control.detach()
        if proc.returncode is None:  # the caller was cancelled: no graceful period
            signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        await _finish(readers)
    code = proc.returncode
    assert code is not None  # waited for above
    if stopped is not None:
        if isinstance(stopped, JobTimeout):
            stopped.exit_code, stopped.stderr_tail = code, tail.text()
        raise stopped
    if code != 0:
        raise classify(code, tail, encoder=encoder)
    final = (pump.last or ProgressUpdate()).with_percent(span[1])
    await pump.emit(final)
    return RunResult(argv, time.monotonic() - started, final, tail.text())


async def _supervise(
    proc: asyncio.subprocess.Process, control: JobHandle
) -> JobCancelled | JobTimeout | None:
    """Wait for exit, acting on a stop request and the hard deadline; returns why we stopped it."""
    waiter = asyncio.ensure_future(proc.wait())
    try:
        for _ in range(10_000_000):
            wake = asyncio.ensure_future(control.changed())
            done, _ = await asyncio.wait(
                {waiter, wake}, timeout=control.remaining(), return_when=asyncio.FIRST_COMPLETED
            )
            wake.cancel()
            if waiter in done:
                return None
            if (stop := control.stopped) is not None:
                await _stop(proc, control)
                return JobCancelled(stop.reason)
            if control.remaining() == 0.0:
                await _stop(proc, control)
                return control.timeout_error()
        raise AssertionError("unreachable: supervise loop bound")
    finally:
        waiter.cancel()


async def _stop(proc: asyncio.subprocess.Process, control: JobHandle) -> None:
    signal_group(proc.pid, signal.SIGINT)
    # A stopped process keeps SIGINT pending until continued.
    signal_group(proc.pid, signal.SIGCONT)
    try:
        await asyncio.wait_for(proc.wait(), timeout=control.grace_s)
    except TimeoutError:
        signal_group(proc.pid, signal.SIGKILL)
        await proc.wait()


class _ProgressPump:
    """Parse progress blocks, throttle them and hand them to the sink; hold the end block."""

    def __init__(self, parser: ProgressParser, sink: ProgressSink | None, interval: float) -> None:
        self._parser = parser
        self._sink = sink
        self._throttle: Throttle[ProgressUpdate] = Throttle(interval)
        self.last: ProgressUpdate | None = None
        self._sink_failed = False

    async def run(self, stream: asyncio.StreamReader) -> None:
        async for line in _lines(stream):
            update = self._parser.feed(line)
            if update is None:
                continue
            self.last = update
            # The end block waits for the exit code: only a success reports 100 %.
            if not update.ended and (due := self._throttle.offer(update)) is not None:
                await self.emit(due)

    async def emit(self, update: ProgressUpdate) -> None:
        if self._sink is None:
            return
        try:
            await self._sink(update)
        except Exception:
            # Keep draining stdout (a full pipe would stall ffmpeg); say so once.
            if not self._sink_failed:
                log.exception("progress sink failed; further progress is dropped silently")
            self._sink_failed = True


async def _collect(
    stream: asyncio.StreamReader, tail: StderrTail, hook: Callable[[str], None] | None
) -> None:
    async for line in _lines(stream):
        tail.add(line)
        if hook is not None:
            hook(line)


async def _lines(stream: asyncio.StreamReader) -> AsyncIterator[str]:
    """Lines split on \\n or \\r, each bounded (StreamReader.readline fails on a huge line)."""
    buf = b""
    for _ in range(1 << 40):
        chunk = await stream.read(_READ_CHUNK)
        if not chunk:
            break
        *complete, buf = (buf + chunk).replace(b"\r", b"\n").split(b"\n")
        for raw in complete:
            yield raw[:MAX_LINE].decode(errors="replace")
        if len(buf) > _READ_CHUNK:
            yield buf[:MAX_LINE].decode(errors="replace")
            buf = b""
    if buf:
        yield buf[:MAX_LINE].decode(errors="replace")


async def _finish(readers: list[asyncio.Task[None]]) -> None:
    # The pipes close when the group is gone; the bound only guards against a leaked descendant.
    _, pending = await asyncio.wait(readers, timeout=5.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
