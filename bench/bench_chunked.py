"""A chunked encode on dev fleets of 1 and 3 nodes vs. the same encode as one ordinary job.

Generates a clip (testsrc2 with grain, a sine), then, on a 1-node dev fleet, encodes it as one
transcode job (the baseline: the same codec, CRF, preset and GOP as the chunks, audio AAC) and
as a chunked workflow (`ChunkedSpec.expand()`), and on a 3-node fleet as the chunked workflow
again. Wall time runs from the API call to the completed event of the job (the baseline) or of
the join step (the workflow). It prints the times and speed-up ratios, which node ran each step
and when, then the quality: VMAF of both outputs against the source, their sizes, and around
each chunk border the lowest per-frame VMAF within ±5 frames against the title's mean (the dip),
in the chunked output and at the same frames of the unchunked one. Run: `.venv/bin/python -m
bench.bench_chunked [--seconds 60] [--chunk-seconds 10] [--rounds 1] [--json]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast, get_args

import msgspec
from nats.aio.msg import Msg

from common.natsconn import NatsSettings, connect
from control.cli.apiclient import ApiClient
from control.devstack.fleet import DevFleet, NodeSettings
from daemon.ffmpeg.tools import FfmpegTools, find_tools
from daemon.media.paths import uri_of
from daemon.media.probe import probe_media
from daemon.ops.analyze import filter_graph
from daemon.ops.vmafpool import read_vmaf_log, vmaf_scores
from schemas import api
from schemas.chunked import JOIN_STEP, ChunkedSpec
from schemas.events import Completed, Event, Failed
from schemas.jobs import JobSpec, Requirements
from schemas.operations import Analyze, Preset, Transcode
from schemas.registry import EVENT_DECODER
from schemas.results import StreamInfo
from schemas.subjects import Subjects
from schemas.workflows import (
    SEPARATOR,
    WorkflowInfo,
    WorkflowRef,
    WorkflowSubmitReply,
    WorkflowSubmitRequest,
)

FPS = 25
WIDTH, HEIGHT = 1280, 720
#: Frames either side of a chunk border the seam check looks at.
SEAM_FRAMES = 5
VMAF_MODEL = "vmaf_v0.6.1"
#: Most one encode may take before the bench gives up (a stuck fleet, not a slow machine).
LIMIT_S = 3600.0
TENANT = "default"


def note(text: str) -> None:
    """Progress goes to stderr: stdout is the table, or the JSON document."""
    print(text, file=sys.stderr, flush=True)


async def _sh(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg failed: {argv}\n{err.decode(errors='replace')[-2000:]}")


def _ff(tools: FfmpegTools) -> list[str]:
    return [tools.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]


async def make_source(tools: FfmpegTools, path: Path, seconds: float) -> None:
    # Temporal grain on testsrc2's moving pattern: every frame costs bits, as film grain does,
    # so the CRF encode has real work and rate-control choices at each border.
    video = f"testsrc2=size={WIDTH}x{HEIGHT}:rate={FPS}:duration={seconds},noise=alls=10:allf=t+u"
    await _sh(
        *_ff(tools), "-f", "lavfi", "-i", video, "-f", "lavfi", "-i",
        f"sine=frequency=440:sample_rate=48000:duration={seconds}", "-c:v", "libx264",
        "-preset", "veryfast", "-crf", "16", "-g", "250", "-pix_fmt", "yuv420p", "-c:a", "aac",
        "-b:a", "192k", "-shortest", str(path),
    )  # fmt: skip


@dataclass
class Encode:
    """One measured encode: the baseline job or a chunked workflow, on a fleet of `nodes`."""

    name: str
    nodes: int
    wall_s: list[float] = field(default_factory=list)
    output: Path | None = None
    #: Per step of the first round: name, node, start and end (s after submit), run time.
    steps: list[dict[str, Any]] = field(default_factory=list)
    chunk_frames: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s)


class Fleet:
    """A started dev fleet, the bench's API client and its subscription to every job event."""

    def __init__(self, dev: DevFleet, client: ApiClient) -> None:
        self.dev, self.client = dev, client
        #: Completed, or finally failed, job id -> (perf_counter at arrival, event).
        self.ended: dict[str, tuple[float, Event]] = {}
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        arrived = time.perf_counter()
        with contextlib.suppress(ValueError, msgspec.DecodeError):
            event = EVENT_DECODER.decode(msg.data)
            if isinstance(event, Completed) or (isinstance(event, Failed) and event.final):
                self.ended.setdefault(event.job_id, (arrived, event))
                self.changed.set()

    async def until_ended(self, job_id: str, family: str) -> float:
        """When `job_id` completed (perf_counter); a final failure of it or of any job whose id
        starts with `family` (a workflow's steps) ends the bench."""
        deadline = time.monotonic() + LIMIT_S
        while time.monotonic() < deadline:
            for jid, (_, event) in self.ended.items():
                if jid.startswith(family) and isinstance(event, Failed):
                    raise SystemExit(f"{jid} failed: {event.reason}")
            if job_id in self.ended:
                return self.ended[job_id][0]
            if self.dev.failed():
                raise SystemExit("the dev fleet broke: " + "; ".join(self.dev.failed()))
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), 1.0)
        raise SystemExit(f"{job_id} did not end in {LIMIT_S:g} s")

    async def job(self, job_id: str) -> api.JobInfo:
        # Ingest records the completed event a moment after it is published.
        ref = api.JobRef(job_id=job_id, tenant=TENANT)
        for _ in range(100):
            info = await self.client.call("job.get", ref, api.JobInfo)
            if info.state == "completed" and info.finished_at is not None:
                return info
            await asyncio.sleep(0.2)
        raise SystemExit(f"job {job_id} is {info.state} in the jobs API after its completed event")

    async def slots(self) -> int:
        reply = await self.client.call("node.list", api.EmptyRequest(), api.NodeListReply)
        caps = [n.capabilities for n in reply.nodes if n.capabilities is not None]
        return min((c.slots.get("cpu", 0) for c in caps), default=0)


async def _until_online(client: ApiClient, dev: DevFleet, count: int) -> None:
    deadline = time.monotonic() + 120.0
    while time.monotonic() < deadline:
        if dev.failed():
            raise SystemExit("the dev fleet broke: " + "; ".join(dev.failed()))
        with contextlib.suppress(Exception):  # the control plane may still be starting
            reply = await client.call("node.list", api.EmptyRequest(), api.NodeListReply)
            if sum(1 for n in reply.nodes if n.state == "online") >= count:
                return
        await asyncio.sleep(0.5)
    raise SystemExit(f"{count} dev nodes did not come online in 120 s")


@contextlib.asynccontextmanager
async def fleet_of(
    data_dir: Path, nodes: int, media: Path, slots: int | None
) -> AsyncIterator[Fleet]:
    settings = NodeSettings(slots={"cpu": slots}) if slots else NodeSettings()
    # No CLI context: the bench's fleet must never become an operator's default.
    dev = DevFleet(data_dir, nodes=nodes, roots=[media], node_settings=settings, context_name=None)
    try:
        await dev.start()
        nats = NatsSettings(url=dev.nats_url, prefix=dev.prefix)
        nc = await connect(nats, name="flotilla-bench", reconnect=False)
        try:
            async with ApiClient(nats) as client:
                fleet = Fleet(dev, client)
                await nc.subscribe(Subjects(dev.prefix).events_wildcard, cb=fleet.on_msg)
                await _until_online(client, dev, nodes)
                yield fleet
        finally:
            await nc.close()
    finally:
        await dev.stop(grace=20.0)


@dataclass(frozen=True)
class Settings:
    seconds: float
    chunk_seconds: float
    crf: int
    preset: Preset
    gop: int
    rounds: int
    slots: int | None


def whole_job(s: Settings, job_id: str, src: Path, out: Path) -> JobSpec:
    """The baseline: the chunks' video settings over the whole clip, the audio as the audio
    step encodes it."""
    op = Transcode(
        codec="h264", rate_control="crf", crf=s.crf, preset=s.preset, gop_size=s.gop,
        closed_gop=True, audio_codec="aac", audio_bitrate_kbps=128,
    )  # fmt: skip
    return JobSpec(
        job_id=job_id, tenant=TENANT, input=uri_of(src), output=uri_of(out), operation=op,
        requirements=Requirements(accel="software"),
    )  # fmt: skip


def chunked_spec(s: Settings, workflow_id: str, src: Path, out: Path) -> ChunkedSpec:
    return ChunkedSpec(
        workflow_id=workflow_id, tenant=TENANT, input=uri_of(src), output=uri_of(out),
        duration_seconds=s.seconds, chunk_seconds=s.chunk_seconds, codec="h264", crf=s.crf,
        preset=s.preset, gop_size=s.gop, audio_codec="aac", audio_bitrate_kbps=128,
    )  # fmt: skip


_ids = itertools.count(1)


async def run_whole(fleet: Fleet, s: Settings, src: Path, out_dir: Path, enc: Encode) -> None:
    n = next(_ids)
    out = out_dir / f"whole-{n}.mp4"
    job = whole_job(s, f"bench-whole-{n}", src, out)
    submitted = time.time()
    start = time.perf_counter()
    await fleet.client.call("job.submit", api.SubmitRequest(job=job), api.SubmitReply)
    enc.wall_s.append(await fleet.until_ended(job.job_id, job.job_id) - start)
    note(f"  {enc.name}, {enc.nodes} node(s): {enc.wall_s[-1]:.1f} s")
    if enc.output is None:
        enc.output = out
        enc.steps = [_step_row("whole", await fleet.job(job.job_id), submitted)]


async def run_chunked(fleet: Fleet, s: Settings, src: Path, out_dir: Path, enc: Encode) -> None:
    n = next(_ids)
    out = out_dir / f"chunked-{n}" / "film.mp4"
    await asyncio.to_thread(out.parent.mkdir)
    spec = chunked_spec(s, f"bench-chunked-{n}", src, out).expand()
    join = f"{spec.workflow_id}{SEPARATOR}{JOIN_STEP}"
    submitted = time.time()
    start = time.perf_counter()
    req = WorkflowSubmitRequest(workflow=spec)
    await fleet.client.call("workflow.submit", req, WorkflowSubmitReply)
    enc.wall_s.append(await fleet.until_ended(join, spec.workflow_id + SEPARATOR) - start)
    note(f"  {enc.name}, {enc.nodes} node(s): {enc.wall_s[-1]:.1f} s")
    wf = await _workflow_done(fleet, spec.workflow_id)
    if enc.output is not None:
        return
    enc.output = out
    for step in wf.steps:
        enc.steps.append(_step_row(step.name, await fleet.job(step.job_id), submitted))
    result = (await fleet.job(join)).result
    if result is not None and result.concat is not None:
        enc.chunk_frames = list(result.concat.chunk_frames)


async def _workflow_done(fleet: Fleet, workflow_id: str) -> WorkflowInfo:
    """The workflow, once the control plane has marked it completed after its join."""
    for _ in range(100):
        info = await fleet.client.call(
            "workflow.get", WorkflowRef(workflow_id=workflow_id), WorkflowInfo
        )
        if info.state == "completed":
            return info
        if info.state not in ("running", "submitted"):
            raise SystemExit(f"workflow {workflow_id} is {info.state}: {info.error}")
        await asyncio.sleep(0.2)
    raise SystemExit(f"workflow {workflow_id} still {info.state} after its join completed")


def _step_row(name: str, info: api.JobInfo, submitted: float) -> dict[str, Any]:
    started = (info.started_at or submitted) - submitted
    finished = (info.finished_at or submitted) - submitted
    return {
        "step": name,
        "node": info.node_id,
        "start_s": round(started, 2),
        "end_s": round(finished, 2),
        "run_s": info.run_time_s,
    }


def _join_figures(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The join's own run, and how long after the last chunk or audio step ended it started
    (the control plane noticing and the join job's dispatch)."""
    join = next((st for st in steps if st["step"] == JOIN_STEP), None)
    others = [st["end_s"] for st in steps if st["step"] != JOIN_STEP]
    if join is None or not others:
        return {}
    return {"join_s": join["run_s"], "join_wait_s": round(join["start_s"] - max(others), 2)}


def _video(info_streams: list[StreamInfo], what: str) -> StreamInfo:
    for stream in info_streams:
        if stream.type == "video":
            return stream
    raise SystemExit(f"{what} has no video stream")


async def vmaf_frames(tools: FfmpegTools, dist: Path, ref: Path, log: Path) -> list[float]:
    """Per-frame VMAF of `dist` against `ref`, through the analyze op's own filter graph."""
    d = _video((await probe_media(tools, dist)).streams, str(dist.name))
    r = _video((await probe_media(tools, ref)).streams, str(ref.name))
    threads = os.cpu_count() or 1
    graph = filter_graph(Analyze(reference=uri_of(ref), vmaf=True), d, r, VMAF_MODEL, log, threads)
    await _sh(
        *_ff(tools), "-filter_threads", str(threads), "-i", str(dist), "-i", str(ref),
        "-filter_complex", graph, "-map", "[out]", "-an", "-f", "null", "-",
    )  # fmt: skip
    return await asyncio.to_thread(read_vmaf_log, log)


def quality(scores: list[float], path: Path, seconds: float) -> dict[str, Any]:
    summary = vmaf_scores(scores, VMAF_MODEL)
    size = path.stat().st_size
    return {
        "bytes": size,
        "kbps": round(size * 8 / 1000 / seconds, 1),
        "frames": len(scores),
        "vmaf_mean": round(summary.mean, 3),
        "vmaf_harmonic": round(summary.harmonic_mean, 3),
        "vmaf_min": round(summary.min, 3),
        "vmaf_p5": round(summary.p5, 3),
    }


def seams(borders: list[int], chunked: list[float], whole: list[float]) -> list[dict[str, Any]]:
    """Per border (the first frame of each chunk after the first): the lowest VMAF within
    ±SEAM_FRAMES and its dip below the title's mean, in the chunked output and, as the control,
    at the same frames of the unchunked one (which has a keyframe there too when the GOP
    divides the chunk length, as by default)."""
    c_mean, w_mean = statistics.fmean(chunked), statistics.fmean(whole)
    rows = []
    for b in borders:
        lo, hi = max(0, b - SEAM_FRAMES), b + SEAM_FRAMES + 1
        c_min, w_min = min(chunked[lo:hi]), min(whole[lo:hi])
        rows.append(
            {
                "frame": b,
                "at_s": round(b / FPS, 3),
                "chunked_min": round(c_min, 3),
                "chunked_dip": round(c_mean - c_min, 3),
                "whole_min": round(w_min, 3),
                "whole_dip": round(w_mean - w_min, 3),
            }
        )
    return rows


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


async def bench(s: Settings) -> dict[str, Any]:
    tools = find_tools()
    load_start = _load()
    # Postgres runs as another user when the bench runs as root: it must reach its data dir.
    root = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="flotilla-bench-chunked-"))
    try:
        await asyncio.to_thread(root.chmod, 0o755)
        media = root / "media"
        await asyncio.to_thread(media.mkdir)
        src = media / "source.mp4"
        note(f"generating a {s.seconds:g} s {WIDTH}x{HEIGHT} {FPS} fps clip …")
        await make_source(tools, src, s.seconds)
        whole = Encode("unchunked, one job", 1)
        chunked1 = Encode("chunked", 1)
        chunked3 = Encode("chunked", 3)
        slots = 0
        for nodes, runs in ((1, (whole, chunked1)), (3, (chunked3,))):
            note(f"starting a {nodes}-node dev fleet …")
            async with fleet_of(root / f"fleet-{nodes}", nodes, media, s.slots) as fleet:
                slots = await fleet.slots()  # the same on every node: one machine
                # Rounds alternate the encodes, so a change in the machine's load falls on both.
                for _ in range(s.rounds):
                    for enc in runs:
                        run = run_whole if enc is whole else run_chunked
                        await run(fleet, s, src, media, enc)
        assert whole.output is not None and chunked3.output is not None
        note("VMAF of both outputs against the source …")
        w_scores = await vmaf_frames(tools, whole.output, src, root / "whole-vmaf.json")
        c_scores = await vmaf_frames(tools, chunked3.output, src, root / "chunked-vmaf.json")
        # The join's packet count of each chunk; failing that, what the borders imply.
        planned = chunked_spec(s, "plan", src, chunked3.output).borders()
        counts = chunked3.chunk_frames or [
            round((length or s.seconds - start) * FPS) for start, length in planned
        ]
        borders = list(itertools.accumulate(counts))[:-1]
        return {
            "clip": {
                "seconds": s.seconds,
                "width": WIDTH,
                "height": HEIGHT,
                "fps": FPS,
                "bytes": src.stat().st_size,
            },
            "encode": {
                "codec": "h264",
                "crf": s.crf,
                "preset": s.preset,
                "gop": s.gop,
                "audio": "aac 128 kb/s",
                "chunk_seconds": s.chunk_seconds,
                "chunks": len(counts),
            },
            "machine": {
                "cpus": os.cpu_count(),
                "load_start": load_start,
                "load_end": _load(),
                "cpu_slots_per_node": slots,
                "threads_per_job": 1,
            },
            "rounds": s.rounds,
            "runs": [
                {
                    "name": e.name,
                    "nodes": e.nodes,
                    "wall_s": [round(w, 2) for w in e.wall_s],
                    "median_s": round(e.median_s, 2),
                    "rtf": round(s.seconds / e.median_s, 2),
                    "steps": e.steps,
                    **_join_figures(e.steps),
                }
                for e in (whole, chunked1, chunked3)
            ],
            "speedup": {
                "unchunked_1_over_chunked_3": round(whole.median_s / chunked3.median_s, 3),
                "chunked_1_over_chunked_3": round(chunked1.median_s / chunked3.median_s, 3),
                "unchunked_1_over_chunked_1": round(whole.median_s / chunked1.median_s, 3),
            },
            "quality": {
                "unchunked": quality(w_scores, whole.output, s.seconds),
                "chunked": quality(c_scores, chunked3.output, s.seconds),
            },
            "seams": seams(borders, c_scores, w_scores),
        }
    finally:
        await asyncio.to_thread(shutil.rmtree, root, True)


def table(doc: dict[str, Any]) -> str:
    clip, enc, mach = doc["clip"], doc["encode"], doc["machine"]
    lines = [
        f"{clip['seconds']:g} s {clip['width']}x{clip['height']} {clip['fps']} fps clip; "
        f"h264 CRF {enc['crf']} {enc['preset']}, GOP {enc['gop']}, {enc['audio']}; "
        f"{enc['chunk_seconds']:g} s chunks ({enc['chunks']}, + audio + join)",
        f"{mach['cpus']} CPUs, load average {' '.join(map(str, mach['load_start']))} at start, "
        f"{' '.join(map(str, mach['load_end']))} at end; "
        f"cpu slots per node {mach['cpu_slots_per_node']}, {mach['threads_per_job']} thread a "
        f"job; {doc['rounds']} round(s), median wall from submit to completed",
        "",
        f"{'run':20} {'nodes':>5} {'wall s':>8} {'rtf':>6}  {'join, after last step':22}"
        "  each round",
    ]
    for r in doc["runs"]:
        rounds = " ".join(f"{w:.1f}" for w in r["wall_s"])
        join = f"{r['join_s']:.1f} s, {r['join_wait_s']:.1f} s after" if "join_s" in r else "-"
        lines.append(
            f"{r['name']:20} {r['nodes']:5d} {r['median_s']:8.1f} {r['rtf']:6.2f}  {join:22}"
            f"  {rounds}"
        )
    sp = doc["speedup"]
    lines += [
        "",
        f"speed-up: unchunked 1 node / chunked 3 nodes {sp['unchunked_1_over_chunked_3']:.2f}; "
        f"chunked 1 node / chunked 3 nodes {sp['chunked_1_over_chunked_3']:.2f}; "
        f"unchunked 1 node / chunked 1 node {sp['unchunked_1_over_chunked_1']:.2f}",
    ]
    for r in doc["runs"]:
        lines += [
            "",
            f"steps, {r['name']} on {r['nodes']} node(s): start and end s after submit, run s",
        ]
        for st in r["steps"]:
            run_s = "-" if st["run_s"] is None else f"{st['run_s']:.1f}"
            lines.append(
                f"  {st['step']:6} {st['node'] or '-':6} {st['start_s']:7.1f} "
                f"{st['end_s']:7.1f} {run_s:>7}"
            )
    q = doc["quality"]
    lines += [
        "",
        f"{'output':10} {'MiB':>7} {'kb/s':>7} {'VMAF':>7} {'harm.':>7} {'p5':>7} {'min':>7}",
    ]
    for name in ("unchunked", "chunked"):
        v = q[name]
        lines.append(
            f"{name:10} {v['bytes'] / 2**20:7.2f} {v['kbps']:7.0f} {v['vmaf_mean']:7.2f} "
            f"{v['vmaf_harmonic']:7.2f} {v['vmaf_p5']:7.2f} {v['vmaf_min']:7.2f}"
        )
    ratio = q["chunked"]["bytes"] / q["unchunked"]["bytes"]
    lines.append(f"size chunked / unchunked {ratio:.3f}")
    lines += [
        "",
        f"seams: lowest VMAF within ±{SEAM_FRAMES} frames of each border; dip = title mean - that",
        f"{'frame':>6} {'at s':>6} {'chunked':>8} {'dip':>6} {'unchunked':>10} {'dip':>6}",
    ]
    for b in doc["seams"]:
        lines.append(
            f"{b['frame']:6d} {b['at_s']:6.1f} {b['chunked_min']:8.2f} "
            f"{b['chunked_dip']:6.2f} {b['whole_min']:10.2f} {b['whole_dip']:6.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length")
    parser.add_argument("--chunk-seconds", type=float, default=10.0, help="chunk length")
    parser.add_argument("--crf", type=int, default=23)
    parser.add_argument("--preset", default="veryfast", choices=get_args(Preset))
    parser.add_argument("--gop", type=int, default=50, help="frames between keyframes")
    parser.add_argument("--rounds", type=int, default=1, help="runs per encode (median)")
    parser.add_argument(
        "--slots",
        type=int,
        default=None,
        help="cpu slots per node (default: the daemon's, cores / 1 thread)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ns = parser.parse_args()
    s = Settings(
        seconds=ns.seconds,
        chunk_seconds=ns.chunk_seconds,
        crf=ns.crf,
        preset=cast(Preset, ns.preset),
        gop=ns.gop,
        rounds=ns.rounds,
        slots=ns.slots,
    )
    import logging

    import uvloop

    # Connection chatter from the fleet's clients closing is noise here.
    logging.basicConfig(level=logging.ERROR)
    doc = uvloop.run(bench(s))
    print(json.dumps(doc, indent=2) if ns.json else table(doc))


if __name__ == "__main__":
    main()
