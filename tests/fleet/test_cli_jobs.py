"""The job commands against a real dev fleet: submit (file, flags, upload), status, jobs, events,
cancel, and the one-line errors scripts rely on."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path

import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg

from common.natsconn import NatsSettings, sync_subscriptions
from control.cli.apiclient import ApiClient
from control.cli.jobflags import flag_document, submit_argv, to_spec
from control.cli.main import build_parser
from control.devstack.fleet import DevFleet
from daemon.ffmpeg.tools import FfmpegTools
from schemas import api
from schemas.codec import Decoder
from schemas.jobs import JobSpec
from schemas.operations import Analyze, Package, Thumbnail, Transcode
from tests.support.devfleet import CliResult, dev_fleet, open_dir, run_cli
from tests.support.media import make_clip


@pytest_asyncio.fixture(scope="module")
async def work() -> AsyncIterator[Path]:
    async with open_dir("flotilla-clijobs-") as path:
        yield path


@pytest_asyncio.fixture(scope="module")
async def fleet(work: Path, media_dir: Path) -> AsyncIterator[DevFleet]:
    async with dev_fleet(work, 1, roots=[media_dir, work / "out"]) as f:
        yield f


def spec_of(*argv: str) -> JobSpec:
    """The spec `flotilla submit ARGV` would send (no fleet needed)."""
    args = build_parser().parse_args(submit_argv(["submit", *argv]))
    return to_spec(flag_document(args), args, "flags")


def test_submit_argv_tells_a_file_from_an_operation() -> None:
    assert submit_argv(["submit", "job.toml", "--wait"]) == ["submit", "file", "job.toml", "--wait"]
    assert submit_argv(["--log-json", "submit", "-"]) == ["--log-json", "submit", "file", "-"]
    assert submit_argv(["submit", "probe", "a.mp4"]) == ["submit", "probe", "a.mp4"]
    assert submit_argv(["submit", "--help"]) == ["submit", "--help"]
    assert submit_argv(["submit", "j.json", "--tenant", "probe"])[:3] == [
        "submit",
        "file",
        "j.json",
    ]
    assert submit_argv(["submit", "--wait", "j.json"]) == ["submit", "file", "--wait", "j.json"]
    assert submit_argv(["status", "x"]) == ["status", "x"]


def test_flag_forms_build_the_spec(tmp_path: Path) -> None:
    src = tmp_path / "in.mp4"
    spec = spec_of(
        "transcode", str(src), str(tmp_path / "o.webm"), "--codec", "vp9", "--height", "720",
        "--bitrate-kbps", "2000", "--pool", "big", "--priority", "high", "--tenant", "acme",
    )  # fmt: skip
    op = spec.operation
    assert isinstance(op, Transcode)
    assert (op.codec, op.container, op.audio_codec, op.height) == ("vp9", "webm", "opus", 720)
    assert (op.rate_control, op.bitrate_kbps, op.crf) == ("vbr", 2000, None)
    assert spec.input == src.as_uri() and spec.pool == "big"
    assert (spec.priority, spec.tenant) == ("high", "acme")
    assert re.fullmatch(r"job-\d{8}-\d{6}-[0-9a-f]{6}", spec.job_id)

    spec = spec_of("analyze", str(src), str(tmp_path / "ref.mp4"), "--vmaf")
    assert isinstance(spec.operation, Analyze)
    assert (spec.operation.vmaf, spec.operation.psnr, spec.operation.ssim) == (True, False, False)
    assert spec.operation.reference == (tmp_path / "ref.mp4").as_uri()
    assert spec.output == (tmp_path / "in.quality.json").as_uri()

    spec = spec_of(
        "package", str(src), str(tmp_path / "hls"), "--dash", "--ladder", "1080,720:3000"
    )
    assert isinstance(spec.operation, Package)
    assert (spec.operation.hls, spec.operation.dash) == (False, True)
    assert [(r.height, r.bitrate_kbps) for r in spec.operation.ladder] == [
        (1080, 5000),
        (720, 3000),
    ]

    spec = spec_of("thumbnail", str(src), str(tmp_path / "s.jpg"), "--sprite", "--job-id", "t-1")
    assert isinstance(spec.operation, Thumbnail) and spec.operation.sprite
    assert spec.job_id == "t-1"


def one_error_line(res: CliResult, code: int) -> None:
    assert res.rc == code, res
    assert "Traceback" not in res.err, res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flotilla: error: "), res.err


async def wait_state(fleet: DevFleet, job_id: str, states: set[str], limit_s: float = 60) -> str:
    deadline = time.monotonic() + limit_s
    state = "?"
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as client:
        while time.monotonic() < deadline:
            info = await client.call("job.get", api.JobRef(job_id=job_id), api.JobInfo)
            state = info.state
            if state in states:
                return state
            await asyncio.sleep(0.3)
    raise AssertionError(f"{job_id} stayed {state}, never reached {states}")


async def test_submit_from_flags_waits_for_completion(
    fleet: DevFleet, clip_small: Path, work: Path
) -> None:
    out = work / "out" / "flags.mp4"
    res = await run_cli(
        "submit", "transcode", str(clip_small), str(out), "--height", "96",
        "--preset", "ultrafast", "--job-id", "flags-1", "--wait",
    )  # fmt: skip
    assert res.rc == 0, res
    assert "flags-1 completed on dev-1" in res.out
    assert out.stat().st_size > 0
    res = await run_cli("status", "flags-1")
    assert res.rc == 0, res
    assert "completed" in res.out and str(out) in res.out


async def test_analyze_and_package_from_flags(
    fleet: DevFleet, clip_small: Path, work: Path
) -> None:
    dist = work / "out" / "dist.mp4"
    res = await run_cli(
        "submit", "transcode", str(clip_small), str(dist), "--crf", "40", "--preset", "ultrafast",
        "--wait",
    )  # fmt: skip
    assert res.rc == 0, res
    res = await run_cli(
        "submit", "analyze", str(dist), str(clip_small), "--psnr", "--wait", "--json"
    )
    assert res.rc == 0, res
    result = json.loads(res.out)["result"]
    assert result["psnr"] is not None and result["vmaf"] is None
    outdir = work / "out" / "ladder"
    res = await run_cli(
        "submit", "package", str(clip_small), str(outdir), "--hls", "--ladder", "96", "--wait"
    )
    assert res.rc == 0, res
    assert any(outdir.glob("*.m3u8"))


async def test_submit_job_files_then_query(fleet: DevFleet, clip_small: Path, work: Path) -> None:
    doc = {"job_id": "file-probe", "input": clip_small.as_uri(), "operation": {"op": "probe"}}
    (work / "probe.json").write_text(json.dumps(doc))
    res = await run_cli("submit", str(work / "probe.json"), "--wait", "--json")
    assert res.rc == 0, res
    info = json.loads(res.out)
    assert info["state"] == "completed" and info["result"]["probe"]["streams"]

    thumb = work / "out" / "thumb.jpg"
    (work / "thumb.toml").write_text(
        f'input = "{clip_small.as_uri()}"\noutput = "{thumb.as_uri()}"\n'
        '[operation]\nop = "thumbnail"\nat_seconds = 0.5\n'
    )
    res = await run_cli("submit", str(work / "thumb.toml"), "--job-id", "file-thumb", "--json")
    assert res.rc == 0, res
    assert json.loads(res.out)["job_id"] == "file-thumb"
    assert await wait_state(fleet, "file-thumb", set(api.TERMINAL_STATES)) == "completed"

    # `-` reads the job document from stdin.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control", "submit", "-", "--job-id", "stdin-probe", "--json",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(json.dumps(doc).encode()), 60)
    assert proc.returncode == 0 and json.loads(out)["job_id"] == "stdin-probe"

    res = await run_cli("status", "file-probe", "--json")
    assert json.loads(res.out)["operation"] == "probe"
    res = await run_cli("jobs", "--json", "--since", "1h")
    assert {"file-probe", "file-thumb"} <= {j["job_id"] for j in json.loads(res.out)["jobs"]}
    res = await run_cli("jobs", "--all", "--limit", "1", "--json", "--state", "completed")
    listed = json.loads(res.out)
    assert len(listed["jobs"]) >= 2 and listed["next_cursor"] is None
    res = await run_cli("jobs", "--limit", "1")
    assert res.rc == 0 and res.out.startswith("JOB") and "(more: --all" in res.out, res
    res = await run_cli("events", "file-thumb", "--json")
    kinds = [e["kind"] for e in json.loads(res.out)["events"]]
    assert "started" in kinds and "completed" in kinds
    res = await run_cli("events", "file-thumb")
    assert res.rc == 0 and "completed" in res.out and "dev-1" in res.out


async def cpu_slots(fleet: DevFleet) -> int:
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as client:
        nodes = await client.call("node.list", api.EmptyRequest(), api.NodeListReply)
    caps = nodes.nodes[0].capabilities
    assert caps is not None
    return caps.slots["cpu"]


async def test_two_tenants_run_jobs_with_one_id(
    fleet: DevFleet, clip_small: Path, work: Path
) -> None:
    """A job id one tenant uses is free for another: both jobs run on the fleet and complete
    with their own outputs and events; the operator names the tenant once two have the id."""
    outs = {t: work / "out" / f"same-{t}.mp4" for t in ("acme", "bravo")}

    def submit(tenant: str) -> Awaitable[CliResult]:
        return run_cli(
            "submit", "transcode", str(clip_small), str(outs[tenant]), "--height", "96",
            "--preset", "ultrafast", "--job-id", "same-1", "--tenant", tenant, "--wait", "--json",
        )  # fmt: skip

    runs = [submit(t) for t in ("acme", "bravo")]
    for tenant, res in zip(("acme", "bravo"), await asyncio.gather(*runs), strict=True):
        assert res.rc == 0, res
        info = json.loads(res.out)
        assert (info["tenant"], info["state"]) == (tenant, "completed")
        [produced] = info["result"]["outputs"]
        assert produced["uri"] == outs[tenant].as_uri() and outs[tenant].stat().st_size > 0
    res = await run_cli("status", "same-1")
    one_error_line(res, 2)
    assert "used by tenants acme, bravo" in res.err
    for tenant in ("acme", "bravo"):
        res = await run_cli("events", "same-1", "--tenant", tenant, "--json")
        assert res.rc == 0, res
        events = json.loads(res.out)["events"]
        assert [e["kind"] for e in events].count("completed") == 1
        assert {e["body"].get("tenant") for e in events if e["node_id"] != "control"} == {tenant}


async def test_cancel_queued_and_running_jobs(
    fleet: DevFleet, ffmpeg_tools: FfmpegTools, media_dir: Path, work: Path
) -> None:
    long = await make_clip(ffmpeg_tools.ffmpeg, media_dir / "long.mp4", seconds=40)
    # One more long job than the node has slots: the node never over-fetches, so one stays queued.
    ids = [f"long-{i}" for i in range(await cpu_slots(fleet) + 1)]
    for job_id in ids:
        res = await run_cli(
            "submit", "transcode", str(long), str(work / "out" / f"{job_id}.mp4"),
            "--codec", "hevc", "--preset", "slow", "--job-id", job_id,
        )  # fmt: skip
        assert res.rc == 0, res
    running: list[str] = []
    deadline = time.monotonic() + 60
    async with ApiClient(NatsSettings(url=fleet.nats_url, prefix=fleet.prefix)) as client:
        while time.monotonic() < deadline:
            page = await client.call(
                "job.list", api.JobListRequest(state="running"), api.JobListReply
            )
            running = [j.job_id for j in page.jobs if j.job_id in ids]
            if len(running) == len(ids) - 1:
                break
            await asyncio.sleep(0.3)
    assert len(running) == len(ids) - 1, running
    (queued,) = set(ids) - set(running)
    res = await run_cli("cancel", queued)
    assert res.rc == 0 and "cancelled while queued" in res.out, res
    assert json.loads((await run_cli("status", queued, "--json")).out)["state"] == "cancelled"
    for job_id in running:
        res = await run_cli("cancel", job_id, "--reason", "test says stop")
        # Says where the cancel went (the node running it), not the node's terse answer; a job
        # started since its node's last heartbeat is found through the node its events name.
        assert res.rc == 0, res
        assert res.out.startswith(f"{job_id}: cancel sent to dev-"), res
    for job_id in running:
        res = await run_cli("watch", job_id, limit_s=60)
        assert res.rc == 1 and f"flotilla: error: {job_id} cancelled: " in res.err, res
    one_error_line(await run_cli("cancel", queued), 2)  # already cancelled


async def test_upload_puts_input_in_object_store(fleet: DevFleet, clip_small: Path) -> None:
    nc = await nats.connect(fleet.nats_url)
    try:
        seen: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_job(msg: Msg) -> None:
            seen.put_nowait(msg.data)

        await nc.subscribe(f"{fleet.prefix}.submit.>", cb=on_job)
        await sync_subscriptions(nc)
        res = await run_cli("submit", "probe", str(clip_small), "--upload", "--job-id", "up-1")
        assert res.rc == 0, res
        spec: JobSpec = Decoder(JobSpec).decode(await asyncio.wait_for(seen.get(), 10))
        key = "uploads/default/up-1/clip_small.mp4"
        assert spec.input == f"nats-obj://{fleet.prefix}_media/{key}"
        store = await nc.jetstream().object_store(f"{fleet.prefix}_media")
        got = await store.get(key)
        assert got.data == await asyncio.to_thread(clip_small.read_bytes)
    finally:
        await nc.close()


async def test_refused_upload_leaves_no_object(fleet: DevFleet, clip_small: Path) -> None:
    res = await run_cli(
        "submit", "probe", str(clip_small), "--upload", "--job-id", "up-refused",
        "--pool", "nvenc",
    )  # fmt: skip
    one_error_line(res, 2)  # no node serves nvenc here: refused with the reason
    nc = await nats.connect(fleet.nats_url)
    try:
        store = await nc.jetstream().object_store(f"{fleet.prefix}_media")
        with pytest.raises(nats.js.errors.ObjectNotFoundError):
            await store.get_info("uploads/default/up-refused/clip_small.mp4")
    finally:
        await nc.close()


async def test_upload_runs_from_and_to_the_object_store(fleet: DevFleet, clip_small: Path) -> None:
    """No shared filesystem: the input goes up with --upload, the output lands in the store."""
    bucket = f"{fleet.prefix}_media"
    out = f"nats-obj://{bucket}/outputs/up-2/out.mp4"
    res = await run_cli(
        "submit", "transcode", str(clip_small), out, "--codec", "h264", "--height", "64",
        "--upload", "--job-id", "up-2", "--wait",
    )  # fmt: skip
    assert res.rc == 0, res
    status = await run_cli("status", "up-2", "--json")
    info: api.JobInfo = Decoder(api.JobInfo).decode(status.out)
    assert info.state == "completed" and info.result is not None
    assert [o.uri for o in info.result.outputs] == [out]
    uploaded = f"nats-obj://{bucket}/uploads/default/up-2/{clip_small.name}"
    assert (info.input, info.output) == (uploaded, out)
    nc = await nats.connect(fleet.nats_url)
    try:
        store = await nc.jetstream().object_store(bucket)
        got = await store.get("outputs/up-2/out.mp4")
        assert got.data is not None and got.data[4:8] == b"ftyp"
        assert len(got.data) == info.result.outputs[0].size_bytes
    finally:
        await nc.close()


async def test_errors_are_one_line(fleet: DevFleet, work: Path, clip_small: Path) -> None:
    (work / "bad.json").write_text('{"input": ')
    one_error_line(await run_cli("submit", str(work / "bad.json")), 2)
    (work / "bad.toml").write_text('input = "file:///x"\n[operation]\nop = "transcode"\n')
    res = await run_cli("submit", str(work / "bad.toml"))
    one_error_line(res, 2)
    assert "output" in res.err
    res = await run_cli("submit", "transcode", str(clip_small), "/tmp/x.mp4", "--crf", "99")
    one_error_line(res, 2)
    for command in ("status", "watch", "events", "cancel"):
        one_error_line(await run_cli(command, "no-such-job"), 4)
    one_error_line(await run_cli("jobs", "retry", "no-such-job"), 4)
    with socket.socket() as s:  # a port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        res = await run_cli("jobs", "--nats-url", f"nats://127.0.0.1:{port}")
    one_error_line(res, 3)
