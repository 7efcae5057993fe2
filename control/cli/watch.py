"""`flotilla watch JOB` (and `submit --wait/--watch`): follow one job until it ends.

Live events come from the job's event subjects; job.get is read at the start (the job may be
done already) and on every quiet poll interval, so a missed event never leaves us waiting.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import time
from typing import TextIO

import msgspec
from nats.aio.msg import Msg

from common.logs import error_line
from control.cli.apiclient import ApiClient
from control.cli.format import duration, print_json
from control.errors import NotFound
from schemas import api, events
from schemas.codec import MAX_EVENT_BYTES, DecodeError, Decoder

EVENT: Decoder[events.JobEvent] = Decoder(events.JobEvent, "job event", max_bytes=MAX_EVENT_BYTES)
EXIT_BY_STATE = {"completed": 0, "failed": 1, "cancelled": 1}


BAR_WIDTH = 24


class Display:
    """On a terminal one redrawn line (bar, percent, fps, speed, ETA, node); elsewhere plain
    lines, one per state change and one per 10 % step, so logs stay readable."""

    def __init__(self, job_id: str, out: TextIO, tty: bool) -> None:
        self.job_id, self.out, self.tty = job_id, out, tty
        self._last: tuple[str, str | None] | None = None
        self._step = 0  # plain lines at each 10 % step past the start
        self._width = 0
        self._drawn = ""
        self._started: float | None = None

    @classmethod
    def for_stdout(cls, job_id: str) -> Display:
        return cls(job_id, sys.stdout, sys.stdout.isatty())

    def show(self, info: api.JobInfo) -> None:
        key = (info.state, info.node_id)
        changed = key != self._last
        self._last = key
        if info.state == "running" and self._started is None:
            self._started = time.monotonic()
        if self.tty:
            self._redraw(info)
            return
        step = int((info.percent or 0.0) // 10)
        if changed:
            node = f" on {info.node_id}" if info.node_id and info.state == "running" else ""
            self._line(f"{self.job_id}: {info.state}{node}")
        if info.state == "running" and info.percent is not None and step > self._step:
            self._step = step
            self._line(f"{self.job_id}: {info.percent:.0f}%{self._rates(info)}")

    def _rates(self, info: api.JobInfo) -> str:
        parts = []
        if info.fps:  # ffmpeg reports 0 until it has a rate
            parts.append(f"{info.fps:.1f} fps")
        if info.speed:
            parts.append(f"{info.speed:.2f}x")
        return ("  " + "  ".join(parts)) if parts else ""

    def _eta(self, percent: float | None) -> str:
        if not percent or self._started is None:
            return "-"
        elapsed = time.monotonic() - self._started
        return duration(elapsed * (100.0 - percent) / percent)

    def _redraw(self, info: api.JobInfo) -> None:
        pct = info.percent if info.state == "running" else None
        filled = round(BAR_WIDTH * (pct or 0.0) / 100.0)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        shown = "-" if pct is None else f"{pct:5.1f}%"
        line = (
            f"{self.job_id} [{bar}] {shown}{self._rates(info)}  ETA {self._eta(pct)}"
            f"  {info.node_id or '-'}  {info.state}"
        )
        # A wrapped line cannot be redrawn with \r: keep it inside the terminal's width.
        line = line[: max(20, shutil.get_terminal_size((120, 24)).columns - 1)]
        if line == self._drawn:
            return
        pad = max(0, self._width - len(line))
        self._width, self._drawn = len(line), line
        self.out.write("\r" + line + " " * pad)
        self.out.flush()

    def _line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def close(self) -> None:
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()


async def _get(
    client: ApiClient, job_id: str, grace_s: float, tenant: str | None = None
) -> api.JobInfo:
    """job.get; a job submitted a moment ago may need a little while to be recorded."""
    deadline = time.monotonic() + grace_s
    ref = api.JobRef(job_id=job_id, tenant=tenant)
    while True:
        try:
            return await client.call("job.get", ref, api.JobInfo)
        except NotFound:
            if time.monotonic() >= deadline:
                raise
        await asyncio.sleep(0.5)


def _apply(info: api.JobInfo, ev: events.JobEvent) -> api.JobInfo:
    """The job as this live event leaves it (the database catches up a moment later)."""
    node = ev.node_id
    match ev:
        case events.Progress():
            return msgspec.structs.replace(
                info, state="running", node_id=node, percent=ev.percent, fps=ev.fps,
                speed=ev.speed,
            )  # fmt: skip
        case events.Started():
            return msgspec.structs.replace(info, state="running", node_id=node, percent=0.0)
        case events.Completed():
            return msgspec.structs.replace(info, state="completed", node_id=node, result=ev.result)
        case events.Failed(final=True):
            return msgspec.structs.replace(
                info, state="failed", node_id=node, last_error=ev.reason,
                stderr_tail=ev.stderr_tail or info.stderr_tail,
            )  # fmt: skip
        case events.Cancelled():
            return msgspec.structs.replace(info, state="cancelled", last_error=ev.reason)
        case events.Failed() | events.Retrying() | events.HandedBack() | events.Interrupted():
            return msgspec.structs.replace(info, state="queued", last_error=ev.reason)
        case _:
            return info


async def follow(
    client: ApiClient,
    job_id: str,
    display: Display | None,
    *,
    poll_s: float = 2.0,
    grace_s: float = 0.0,
    tenant: str | None = None,
) -> api.JobInfo:
    """Until the job is terminal; returns its final JobInfo (from the database when it has it).
    Without `tenant` the job is the one tenant's the key may see (an operator's: the only one
    with that id). Live updates come on the job's own subject (control.api.updates), not from
    the fleet's whole event stream; between them the API is polled every `poll_s`."""
    queue: asyncio.Queue[events.JobEvent] = asyncio.Queue(maxsize=1000)

    async def on_msg(msg: Msg) -> None:
        try:
            ev = EVENT.decode(msg.data)
        except DecodeError:
            return
        if ev.job_id == job_id and not queue.full():
            queue.put_nowait(ev)

    info = await _get(client, job_id, grace_s, tenant)
    tenant = tenant or info.tenant
    sub = await client.nc.subscribe(client.subjects.job_updates(tenant, job_id), cb=on_msg)
    try:
        while info.state not in api.TERMINAL_STATES:
            if display is not None:
                display.show(info)
            try:
                ev = await asyncio.wait_for(queue.get(), poll_s)
            except TimeoutError:
                info = await _get(client, job_id, grace_s, tenant)
                continue
            info = _apply(info, ev)
        return await _settle(client, info, tenant)
    finally:
        await sub.unsubscribe()
        if display is not None:
            display.close()


async def _settle(
    client: ApiClient, info: api.JobInfo, tenant: str | None, limit_s: float = 5.0
) -> api.JobInfo:
    """The database's final record once ingest has it (run time, result); else the live view."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        stored = await _get(client, info.job_id, 0.0, tenant)
        if stored.state in api.TERMINAL_STATES:
            return stored
        await asyncio.sleep(0.3)
    return info


def outcome_line(info: api.JobInfo) -> str:
    """The one line that ends a watch: what happened, and why when it went wrong."""
    if info.state == "completed":
        took = info.run_time_s
        if took is None and info.result is not None:
            took = info.result.wall_seconds
        return f"{info.job_id} completed on {info.node_id or '-'} in {duration(took)}"
    return f"{info.job_id} {info.state}: {info.last_error or 'no reason given'}"


def _roots_hint(info: api.JobInfo) -> str:
    """What to do about a path a node refused as outside its allowed roots."""
    reason = info.last_error or ""
    if "outside the allowed roots" not in reason:
        return ""
    if f"{info.input!r} resolves" in reason:
        return "; put the input under one of them, or submit with --upload"
    return "; write the output under one of them, or to nats-obj://"


def report(info: api.JobInfo, as_json: bool) -> int:
    """The end of a watch: the JobInfo (--json), the outcome line on stdout for a completed
    job, else one `flotilla: error:` line on stderr; the exit code by the job's state."""
    if as_json:
        print_json(info)
    elif info.state == "completed":
        print(outcome_line(info), flush=True)
    else:
        line = outcome_line(info) + _roots_hint(info)
        print(error_line(line), file=sys.stderr, flush=True)
    return EXIT_BY_STATE.get(info.state, 1)


async def watch(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        display = None if args.json else Display.for_stdout(args.job_id)
        info = await follow(client, args.job_id, display, tenant=args.tenant)
    return report(info, args.json)
