"""`make demo`: a dev fleet of two daemons runs a realistic batch of real jobs, then stops.

Media is generated with lavfi, jobs are published the way any producer would (one JSON message
per job on the submit subject), progress is followed on the events subjects, and a results
table is printed. Outputs stay in `demo-output/`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common.natsconn import NatsSettings, connect
from control.cli.apiclient import ApiClient
from control.cli.format import result_line, result_rows
from control.devstack.fleet import DevFleet, make_source
from control.errors import CliError
from daemon.ffmpeg.tools import find_tools
from schemas.chunked import ChunkedSpec
from schemas.events import Completed, Event, Failed, kind_of
from schemas.registry import EVENT_DECODER
from schemas.subjects import Subjects, job_msg_id
from schemas.workflows import SEPARATOR, WorkflowSpec, WorkflowSubmitReply, WorkflowSubmitRequest

OUT = Path("demo-output")
TIMEOUT = 600.0
SOURCE_SECONDS = 3


def jobs(run: str, media: Path) -> list[dict[str, Any]]:
    src = f"file://{media / 'source-1080p.mp4'}"
    out = f"file://{media}"

    def job(n: str, op: dict[str, Any], output: str | None) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "v": 1,
            "job_id": f"{run}-{n}",
            "input": src,
            "operation": op,
            "tenant": "demo",
        }
        if output:
            spec["output"] = output
        return spec

    return [
        job(
            "h264-720p",
            {"op": "transcode", "codec": "h264", "height": 720, "preset": "veryfast", "crf": 23},
            f"{out}/h264-720p.mp4",
        ),
        job(
            "hevc-720p",
            {"op": "transcode", "codec": "hevc", "height": 720, "preset": "ultrafast", "crf": 28},
            f"{out}/hevc-720p.mp4",
        ),
        job(
            "ladder",
            {
                "op": "package",
                "hls": True,
                "dash": True,
                "segment_seconds": 1,
                "ladder": [
                    {"height": 720, "bitrate_kbps": 2500},
                    {"height": 480, "bitrate_kbps": 1000},
                    {"height": 360, "bitrate_kbps": 600},
                ],
            },
            f"{out}/ladder",
        ),
        job("probe", {"op": "probe"}, None),
        # Per-title: each rung's CRF searched on short samples for VMAF 93 (small, to stay quick).
        job(
            "pertitle",
            {
                "op": "pertitle",
                "rungs": [{"height": 720}, {"height": 360}],
                "target": 93,
                "samples": 2,
                "sample_seconds": 1,
                "max_probes": 4,
                "preset": "veryfast",
            },
            f"{out}/pertitle",
        ),
        job(
            "sprite",
            {"op": "thumbnail", "sprite": True, "tiles": 9, "columns": 3, "width": 240},
            f"{out}/sprite.jpg",
        ),
    ]


def analyze_job(run: str, media: Path) -> dict[str, Any]:
    return {
        "v": 1,
        "job_id": f"{run}-vmaf",
        "tenant": "demo",
        "input": f"file://{media / 'h264-720p.mp4'}",
        "output": f"file://{media}/vmaf.json",
        "operation": {
            "op": "analyze",
            "reference": f"file://{media / 'source-1080p.mp4'}",
            "vmaf": True,
            "psnr": True,
            "ssim": True,
            "subsample": 5,
        },
    }


def chunked_workflow(run: str, media: Path) -> WorkflowSpec:
    """The source in 1 s chunks encoded on whichever nodes are free, audio once, then joined."""
    spec = ChunkedSpec(
        workflow_id=f"{run}-chunked", tenant="demo", input=f"file://{media / 'source-1080p.mp4'}",
        output=f"file://{media / 'chunked.mp4'}", duration_seconds=SOURCE_SECONDS,
        chunk_seconds=1, height=720, preset="veryfast", gop_size=25,
    )  # fmt: skip
    return spec.expand()


class Tracker:
    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.done = asyncio.Event()
        self.expected = 0

    def on_event(self, event: Event) -> None:
        job_id = getattr(event, "job_id", None)
        if job_id is None or job_id not in self.rows:
            return
        row = self.rows[job_id]
        kind = kind_of(event)
        row["node"] = getattr(event, "node_id", row.get("node"))
        if kind == "progress" and getattr(event, "percent", None) is not None:
            pct = int(getattr(event, "percent", 0))
            if pct // 25 != row.get("pct", -1) // 25:
                print(f"  {job_id:<28} {pct:3d}%  on {row['node']}", flush=True)
            row["pct"] = pct
        elif isinstance(event, Completed):
            row.update(state="completed", result=event.result)
            print(f"  {job_id:<28} completed on {row['node']}", flush=True)
        elif isinstance(event, Failed) and event.final:
            row.update(state="failed", error=event.reason)
            print(f"  {job_id:<28} FAILED: {event.reason}", flush=True)
        elif kind == "cancelled":
            row["state"] = "cancelled"
        if sum(1 for r in self.rows.values() if "state" in r) >= self.expected:
            self.done.set()


def table(tracker: Tracker) -> str:
    lines = [
        f"{'job':<28} {'operation':<10} {'node':<7} {'state':<10} {'wall s':>7} "
        f"{'x rt':>6} {'output':>10}  result"
    ]
    for job_id, row in tracker.rows.items():
        res = row.get("result")
        # A package's result names its playlists; its segments count too.
        size = row.get("dir_bytes") or (sum(o.size_bytes for o in res.outputs) if res else 0)
        # A probe or an analyze writes no media: no size, its findings instead.
        out = f"{size / 1024:.0f}Ki" if size else "-"
        found = result_line(res) if res else "-"
        rtf = f"{res.realtime_factor:.2f}" if res and res.realtime_factor else "-"
        wall = f"{res.wall_seconds:.1f}" if res else "-"
        lines.append(
            f"{job_id:<28} {row['op']:<10} {row.get('node', '-'):<7} "
            f"{row.get('state', 'pending'):<10} {wall:>7} {rtf:>6} "
            f"{out:>10}  {found}"
        )
        if row.get("error"):
            lines.append(f"    reason: {row['error']}")
    return "\n".join(lines)


#: The rows of result_rows that tell a per-title ladder's choices.
PERTITLE = ("per-title", "bits saved")


def details(tracker: Tracker) -> str:
    """The per-title ladder's choices, rung by rung, under the table."""
    lines = []
    for job_id, row in tracker.rows.items():
        res = row.get("result")
        if res is not None and res.pertitle is not None:
            lines.append(f"\n{job_id}: per-title ladder for {res.pertitle.metric} "
                         f"{res.pertitle.target:g}")  # fmt: skip
            lines.extend(f"  {text}" for label, text in result_rows(res) if label in PERTITLE)
    return "\n".join(lines)


def _dir_bytes(uri: str) -> int:
    root = Path(uri.removeprefix("file://"))
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


async def publish(js: Any, subjects: Subjects, tracker: Tracker, spec: dict[str, Any]) -> None:
    tracker.rows[spec["job_id"]] = {"op": spec["operation"]["op"], "output": spec.get("output")}
    tracker.expected += 1
    subject = subjects.submit(spec.get("tenant", "default"), "cpu", "normal", spec["job_id"])
    msg_id = job_msg_id(spec.get("tenant", "default"), spec["job_id"])
    await js.publish(subject, json.dumps(spec).encode(), headers={"Nats-Msg-Id": msg_id})


async def submit_workflow(fleet: DevFleet, tracker: Tracker, spec: WorkflowSpec) -> None:
    """Through the API, as `flotilla chunked submit` does: the leader runs each step as a job."""
    for step in spec.steps:
        tracker.rows[f"{spec.workflow_id}{SEPARATOR}{step.name}"] = {
            "op": step.operation.__struct_config__.tag
        }
        tracker.expected += 1
    settings = NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)
    async with ApiClient(settings) as client:
        req = WorkflowSubmitRequest(workflow=spec)
        await client.call("workflow.submit", req, WorkflowSubmitReply)


def _fresh_output_dir() -> Path:
    if OUT.exists():
        shutil.rmtree(OUT)
    media = (OUT / "media").resolve()
    media.mkdir(parents=True)
    return media


async def demo() -> int:
    media = await asyncio.to_thread(_fresh_output_dir)
    tools = find_tools()
    print(f"generating a {SOURCE_SECONDS} s 1080p sample with {tools.ffmpeg} …", flush=True)
    try:
        await make_source(tools.ffmpeg, media / "source-1080p.mp4", SOURCE_SECONDS)
    except CliError as exc:
        raise SystemExit(f"demo: {exc}") from None
    # Its own context, not the current one: a `flotilla dev` fleet stays the default.
    fleet = DevFleet(
        OUT / "fleet", nodes=2, roots=[media], context_name="demo", context_current=False
    )
    print(
        "starting the dev fleet (nats-server, PostgreSQL, control plane, 2 daemons) …", flush=True
    )
    await fleet.start()
    tracker = Tracker()
    try:
        nc = await connect(NatsSettings(url=fleet.nats_url), name="flotilla-demo", reconnect=False)
        subjects = Subjects(fleet.prefix)

        async def on_msg(msg: Any) -> None:
            with contextlib.suppress(ValueError):
                tracker.on_event(EVENT_DECODER.decode(msg.data))

        await nc.subscribe(subjects.events_wildcard, cb=on_msg)
        js = nc.jetstream()
        run = time.strftime("demo-%H%M%S")
        started = time.monotonic()
        for spec in jobs(run, media):
            await publish(js, subjects, tracker, spec)
        print(f"submitted {tracker.expected} jobs; progress:", flush=True)
        while tracker.rows[f"{run}-h264-720p"].get("state") is None:
            if fleet.failed() or time.monotonic() - started > TIMEOUT:
                break
            await asyncio.sleep(0.5)
        if tracker.rows[f"{run}-h264-720p"].get("state") == "completed":
            await publish(js, subjects, tracker, analyze_job(run, media))
        await submit_workflow(fleet, tracker, chunked_workflow(run, media))
        remaining = TIMEOUT - (time.monotonic() - started)
        try:
            await asyncio.wait_for(tracker.done.wait(), max(remaining, 1.0))
        except TimeoutError:
            print("demo: timed out waiting for jobs", file=sys.stderr)
        await nc.close()
        print()
        for row in tracker.rows.values():
            if row["op"] in ("package", "pertitle") and row.get("output"):
                row["dir_bytes"] = await asyncio.to_thread(_dir_bytes, row["output"])
        print(table(tracker))
        print(details(tracker))
        print(f"\noutputs in {media}; fleet logs in {fleet.data_dir}")
    finally:
        print("stopping the fleet …", flush=True)
        await fleet.stop()
    ok = all(r.get("state") == "completed" for r in tracker.rows.values())
    return 0 if ok else 1


def main() -> None:
    import logging

    import uvloop

    # The demo prints its own progress; connection chatter from closing clients is noise here.
    logging.basicConfig(level=logging.ERROR)

    sys.exit(uvloop.run(demo()))


if __name__ == "__main__":
    main()
