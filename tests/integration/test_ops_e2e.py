"""Every media operation and storage kind through a real daemon (issue 4's "Done when").

One in-process Daemon serves the whole module on its own subject prefix, confined to one root
directory; jobs are plain JSON published on the submit subject with nats-py, and their events
are read back from the events stream by an ordered consumer. Outputs are checked by probing
them (no ffprobe ships with the ffmpeg wheel: daemon.media.probe is its stand-in) and by
decoding every rendition with ffmpeg.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from control.cli.upload import put_file
from control.devstack.stack import NatsServer
from control.topology import ensure_topology
from daemon.app import Daemon
from daemon.ffmpeg.tools import FfmpegTools
from daemon.media.probe import probe_media
from schemas.subjects import Subjects
from tests.conftest import ExternalNats
from tests.support.daemons import ACK_WAIT, TOPO, Event, config, kinds, submit, until
from tests.support.httpserver import Server
from tests.support.media import run_ffmpeg

WAIT_S = 90.0
PROBE_S = 20.0


@dataclass
class Fleet:
    """The module's daemon, its root, and the events seen so far, by job id."""

    js: JetStreamContext
    prefix: str
    root: Path
    http: Server
    seen: dict[str, list[Event]] = field(default_factory=dict)

    async def run(self, job_id: str, src: str, op: dict[str, Any], out: str | None = None,
                  attempts: int = 3) -> list[Event]:  # fmt: skip
        """Submit a job and wait until it ends (completed, or a final failure)."""
        spec: dict[str, Any] = {"v": 1, "job_id": job_id, "input": src, "operation": op,
                                "max_attempts": attempts}  # fmt: skip
        if out is not None:
            spec["output"] = out
        await submit(self.js, self.prefix, spec)
        await until(self._ended(job_id), WAIT_S)
        return self.seen[job_id]

    def _ended(self, job_id: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return any(_final(e) for e in self.seen.get(job_id, []))

        return check

    async def result(self, job_id: str, src: str, op: dict[str, Any],
                     out: str | None = None) -> dict[str, Any]:  # fmt: skip
        evts = await self.run(job_id, src, op, out)
        done = [e for e in evts if e["kind"] == "completed"]
        assert len(done) == 1, [(e["kind"], e.get("reason")) for e in evts]
        # `started` comes before any progress, whichever operation ran.
        assert kinds(evts)[:2] == ["accepted", "started"], kinds(evts)
        result: dict[str, Any] = done[0]["result"]
        return result

    async def failure(self, job_id: str, src: str, op: dict[str, Any],
                      out: str | None = None) -> Event:  # fmt: skip
        evts = await self.run(job_id, src, op, out)
        assert "completed" not in kinds(evts)
        failed = [e for e in evts if e["kind"] == "failed"]
        assert failed and failed[-1]["final"], failed
        assert failed[-1]["error_kind"] == "permanent" and failed[-1]["attempt"] == 1, failed
        assert kinds(evts).count("accepted") == 1  # refused for good: never retried
        return failed[-1]

    def command(self, job_id: str) -> list[str]:
        """The ffmpeg argv the job's `started` event reported."""
        [started] = [e for e in self.seen[job_id] if e["kind"] == "started"]
        argv: list[str] = started["command"]
        return argv

    def uri(self, rel: str) -> str:
        return (self.root / rel).as_uri()


def _final(e: Event) -> bool:
    return e["kind"] == "completed" or (e["kind"] == "failed" and bool(e["final"]))


@pytest_asyncio.fixture(scope="module")
async def fleet(
    nats_server: NatsServer | ExternalNats,
    tmp_path_factory: pytest.TempPathFactory,
    clip: Path,
) -> AsyncIterator[Fleet]:
    if isinstance(nats_server, NatsServer):
        await nats_server.start()  # a test elsewhere may have left it stopped
    base = tmp_path_factory.mktemp("ops-e2e")
    root = base / "root"
    (root / "out").mkdir(parents=True)
    (base / "outside").mkdir()
    await asyncio.to_thread(shutil.copyfile, clip, root / "clip.mp4")
    srv = Server(body=await asyncio.to_thread(clip.read_bytes))
    tcp = await asyncio.start_server(srv.handle, "127.0.0.1", 0)
    srv.port = tcp.sockets[0].getsockname()[1]
    nc = await nats.connect(nats_server.url, connect_timeout=5)
    prefix = "t" + secrets.token_hex(4)
    js = nc.jetstream(timeout=10)
    await ensure_topology(js, Subjects(prefix), TOPO)
    state = Fleet(js=js, prefix=prefix, root=root, http=srv)

    async def on_event(msg: Msg) -> None:
        event = json.loads(msg.data)
        if "job_id" in event:
            state.seen.setdefault(event["job_id"], []).append(event)

    sub = await js.subscribe(f"{prefix}.events.>", cb=on_event, ordered_consumer=True)
    media = {"http_hosts": ["127.0.0.1"], "http_allow_private": True, "http_retries": 1,
             "http_backoff": 0.05, "probe_timeout": PROBE_S}  # fmt: skip
    cfg = config(nats_server.url, prefix, base / "state", "ops1", allowed_roots=[str(root)],
                 media=media)  # fmt: skip
    daemon = Daemon(cfg)
    await daemon.start()
    try:
        yield state
    finally:
        await daemon.stop(force=True)
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        await nc.close()
        tcp.close()
        await tcp.wait_closed()


def _video(info: dict[str, Any]) -> dict[str, Any]:
    stream: dict[str, Any] = next(s for s in info["streams"] if s["type"] == "video")
    return stream


async def _matches_file(output: dict[str, Any], path: Path) -> None:
    data = await asyncio.to_thread(path.read_bytes)
    assert output["uri"] == path.as_uri()
    assert (output["size_bytes"], output["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())


async def _decodes(tools: FfmpegTools, playlist: Path) -> float:
    """Decode every stream a playlist/manifest names to the end; the decoded duration."""
    code, err = await run_ffmpeg(
        tools.ffmpeg, "-loglevel", "level+info", "-protocol_whitelist", "file",
        "-i", str(playlist), "-map", "0", "-f", "null", "-",
    )  # fmt: skip
    text = err.decode(errors="replace")
    assert code == 0 and "[error]" not in text, text[-2000:]
    h, m, s = re.findall(r"time=(\d+):(\d+):([\d.]+)", text)[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


async def test_transcode(fleet: Fleet, ffmpeg_tools: FfmpegTools) -> None:
    op = {"op": "transcode", "codec": "h264", "preset": "ultrafast", "width": 160}
    result = await fleet.result("tc", fleet.uri("clip.mp4"), op, fleet.uri("out/tc.mp4"))
    out = fleet.root / "out" / "tc.mp4"
    [output] = result["outputs"]
    await _matches_file(output, out)
    info = await probe_media(ffmpeg_tools, out)
    video = next(s for s in info.streams if s.type == "video")
    assert (video.codec, video.width, video.height) == ("h264", 160, 120)  # aspect kept
    assert any(s.type == "audio" and s.codec == "aac" for s in info.streams)
    assert info.duration_s is not None and abs(info.duration_s - 2.0) < 0.15
    assert result["encoder"] == "libx264" and "libx264" in fleet.command("tc")


async def test_analyze_self_and_compressed(fleet: Fleet, ffmpeg_tools: FfmpegTools) -> None:
    code, err = await run_ffmpeg(
        ffmpeg_tools.ffmpeg, "-loglevel", "error", "-y", "-i", str(fleet.root / "clip.mp4"),
        "-c:v", "libx264", "-crf", "45", "-maxrate", "20k", "-bufsize", "40k", "-c:a", "copy",
        str(fleet.root / "bad.mp4"),
    )  # fmt: skip
    assert code == 0, err
    ref = fleet.uri("clip.mp4")
    op = {"op": "analyze", "reference": ref, "frame_log": True}
    same = await fleet.result("an-self", ref, op, fleet.uri("out/an-self.json"))
    op = {"op": "analyze", "reference": ref}
    worse = await fleet.result("an-bad", fleet.uri("bad.mp4"), op, fleet.uri("out/an-bad.json"))
    assert same["vmaf"]["mean"] >= 99
    assert same["ssim"]["average"] > 0.999 and same["psnr"]["average"] >= 60
    [log] = same["outputs"]
    assert log["role"] == "frame_log"
    await _matches_file(log, fleet.root / "out" / "an-self.json")
    assert worse["vmaf"]["mean"] < same["vmaf"]["mean"] - 10
    v = worse["vmaf"]
    assert v["min"] <= v["p1"] <= v["p5"] <= v["p50"] and v["harmonic_mean"] <= v["mean"]
    assert worse["psnr"]["average"] < 40
    assert worse["ssim"]["average"] < same["ssim"]["average"] - 0.02
    for scores in (worse["psnr"], worse["ssim"]):
        assert {"y", "u", "v", "average"} <= scores.keys()
    assert any("libvmaf" in arg for arg in fleet.command("an-bad"))


async def test_package_hls_and_dash_ladder(fleet: Fleet, ffmpeg_tools: FfmpegTools) -> None:
    ladder = [{"height": 480, "bitrate_kbps": 900}, {"height": 240, "bitrate_kbps": 400},
              {"height": 120, "bitrate_kbps": 150, "audio_bitrate_kbps": None}]  # fmt: skip
    op = {"op": "package", "ladder": ladder, "dash": True, "segment_seconds": 1.0,
          "preset": "ultrafast"}  # fmt: skip
    result = await fleet.result("pkg", fleet.uri("clip.mp4"), op, fleet.uri("out/pkg"))
    out = fleet.root / "out" / "pkg"
    assert result["dropped_rungs"] == ["480p (source is 240p)"]  # never upscaled
    sizes = [(r["width"], r["height"]) for r in result["renditions"]]
    assert sizes == [(320, 240), (160, 120)]
    master = await asyncio.to_thread((out / "master.m3u8").read_text)
    assert "RESOLUTION=320x240" in master and "RESOLUTION=160x120" in master
    variants = [line for line in master.splitlines() if line.endswith(".m3u8")]
    assert len(variants) == 2 and master.count("#EXT-X-STREAM-INF") == 2
    for variant in variants:
        assert abs(await _decodes(ffmpeg_tools, out / variant) - 2.0) < 0.2, variant
    mpd = await asyncio.to_thread((out / "manifest.mpd").read_text)
    assert mpd.count("<Representation ") == 3  # two video rungs and one audio rung
    assert 'height="240"' in mpd and 'height="120"' in mpd
    assert abs(await _decodes(ffmpeg_tools, out / "manifest.mpd") - 2.0) < 0.2
    roles = {o["role"] for o in result["outputs"]}
    assert "master" in roles
    for output in result["outputs"]:
        assert output["uri"].startswith(out.as_uri() + "/")
    assert "libx264" in fleet.command("pkg")


async def test_pertitle_ladder(fleet: Fleet, ffmpeg_tools: FfmpegTools) -> None:
    rungs = [{"height": 480}, {"height": 240}, {"height": 120, "max_bitrate_kbps": 300}]
    op = {"op": "pertitle", "rungs": rungs, "target": 93, "samples": 1, "sample_seconds": 1.0,
          "preset": "veryfast", "hls": True, "segment_seconds": 1.0}  # fmt: skip
    result = await fleet.result("pt", fleet.uri("clip.mp4"), op, fleet.uri("out/pt"))
    out = fleet.root / "out" / "pt"
    report = result["pertitle"]
    assert (report["metric"], report["target"], report["codec"]) == ("vmaf", 93.0, "h264")
    assert result["dropped_rungs"][0] == "480p (source is 240p)"  # never upscaled
    top, low = report["rungs"]
    assert (top["height"], top["width"], low["height"], low["width"]) == (240, 320, 120, 160)
    assert top["target_reached"] and not top["dropped"]
    assert abs(top["measured_quality"] - 93.0) <= 2.0, top
    assert len(top["probes"]) <= 6 and [top["crf"], top["predicted_quality"]] in top["probes"]
    for rung in report["rungs"]:
        assert {"fixed_kbps", "fixed_quality", "bits_saved_estimated"} <= rung.keys()
        if not rung["dropped"]:
            path = out / f"{rung['height']}p.mp4"
            [output] = [o for o in result["outputs"] if o["uri"] == path.as_uri()]
            await _matches_file(output, path)
            assert output["role"] == "rung" and rung["size_bytes"] == output["size_bytes"]
    master = await asyncio.to_thread((out / "master.m3u8").read_text)
    for variant in [line for line in master.splitlines() if line.endswith(".m3u8")]:
        assert abs(await _decodes(ffmpeg_tools, out / variant) - 2.0) < 0.2, variant
    started = next(e for e in fleet.seen["pt"] if e["kind"] == "started")
    assert started["encoder"] == "libx264"
    assert any("scene_score" in arg for arg in fleet.command("pt"))  # the sample-placing pass


async def test_probe(fleet: Fleet) -> None:
    result = await fleet.result("pr", fleet.uri("clip.mp4"), {"op": "probe", "deep": True})
    info = result["probe"]
    size = (await asyncio.to_thread((fleet.root / "clip.mp4").stat)).st_size
    assert info["size_bytes"] == size and result["input_size_bytes"] == size
    assert abs(info["duration_s"] - 2.0) < 0.1
    video = _video(info)
    assert (video["codec"], video["width"], video["height"]) == ("h264", 320, 240)
    assert video["fps"] == 25 and video["pix_fmt"] == "yuv420p"
    audio = next(s for s in info["streams"] if s["type"] == "audio")
    assert (audio["codec"], audio["sample_rate"]) == ("aac", 48000)
    assert info["decode_errors"] == 0
    assert result["outputs"] == []
    assert "null" in fleet.command("pr")  # the deep pass decoded through the runner


async def test_thumbnail_sprite(fleet: Fleet, ffmpeg_tools: FfmpegTools) -> None:
    op = {"op": "thumbnail", "sprite": True, "tiles": 8, "columns": 4, "width": 80}
    result = await fleet.result("th", fleet.uri("clip.mp4"), op, fleet.uri("out/sprite.jpg"))
    sprite = fleet.root / "out" / "sprite.jpg"
    by_role = {o["role"]: o for o in result["outputs"]}
    assert sorted(by_role) == ["index", "main"]
    await _matches_file(by_role["main"], sprite)
    await _matches_file(by_role["index"], fleet.root / "out" / "sprite.jpg.vtt")
    info = await probe_media(ffmpeg_tools, sprite)
    assert (info.streams[0].width, info.streams[0].height) == (320, 120)  # 4x2 tiles of 80x60
    vtt = await asyncio.to_thread((fleet.root / "out" / "sprite.jpg.vtt").read_text)
    assert vtt.startswith("WEBVTT") and vtt.count("#xywh=") == 8
    assert fleet.command("th")


async def test_object_store_in_and_out(fleet: Fleet, ffmpeg_tools: FfmpegTools) -> None:
    bucket = f"{fleet.prefix}_media"
    store = await fleet.js.object_store(bucket)
    body = await asyncio.to_thread((fleet.root / "clip.mp4").read_bytes)
    # The bucket refuses roll-ups, so nats-py's own put cannot replace a name: upload as the CLI.
    await put_file(fleet.js, bucket, "uploads/ob1/in.mp4", fleet.root / "clip.mp4")
    op = {"op": "transcode", "codec": "h264", "preset": "ultrafast", "height": 120}
    src, dest = (
        f"nats-obj://{bucket}/uploads/ob1/in.mp4",
        f"nats-obj://{bucket}/outputs/ob1/out.mp4",
    )
    result = await fleet.result("ob1", src, op, dest)
    assert result["input_size_bytes"] == len(body)  # the input came down whole
    [output] = result["outputs"]
    got = await store.get("outputs/ob1/out.mp4")
    data = got.data or b""
    assert output["uri"] == dest
    assert (output["size_bytes"], output["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert got.info.size == len(data)
    [written] = [e for e in fleet.seen["ob1"] if e["kind"] == "output"]
    assert written["output"] == output  # the output event says the same as the result
    back = fleet.root / "out" / "ob1-back.mp4"
    await asyncio.to_thread(back.write_bytes, data)
    info = await probe_media(ffmpeg_tools, back)
    video = next(s for s in info.streams if s.type == "video")
    assert (video.codec, video.width, video.height) == ("h264", 160, 120)
    assert info.duration_s is not None and abs(info.duration_s - 2.0) < 0.15
    # Probing the uploaded object again gives the same bytes back through the daemon.
    again = await fleet.result("ob2", dest, {"op": "probe"})
    assert again["input_size_bytes"] == len(data)


async def test_http_input_allowed_and_refused(fleet: Fleet) -> None:
    url = fleet.http.url("/clip.mp4")
    result = await fleet.result("http-ok", url, {"op": "probe"})
    assert result["input_size_bytes"] == len(fleet.http.body)
    assert abs(result["probe"]["duration_s"] - 2.0) < 0.1
    # The same server under a name that is not on the allow-list: refused before any request.
    other = f"http://localhost:{fleet.http.port}/refused.mp4"
    failed = await fleet.failure("http-no", other, {"op": "probe"})
    assert "allow-list" in failed["reason"] and "localhost" in failed["reason"]
    assert "/refused.mp4" not in fleet.http.hits
    await asyncio.sleep(ACK_WAIT + 1)  # past ack_wait: a refused job is not redelivered either
    assert kinds(fleet.seen["http-no"]).count("accepted") == 1


def _trap(path: Path) -> Path:
    """A FIFO outside the roots: had ffmpeg opened it, it would block until the probe timeout."""
    os.mkfifo(path)
    return path


def _hls(fleet: Fleet) -> str:
    trap = _trap(fleet.root.parent / "outside" / "secret.ts")
    text = f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:///etc/passwd\n#EXTINF:1,\n{trap}\n"
    (fleet.root / "evil.m3u8").write_text(
        text + "#EXTINF:1,\n../outside/secret.ts\n#EXT-X-ENDLIST\n"
    )
    return fleet.uri("evil.m3u8")


def _concat(fleet: Fleet) -> str:
    trap = _trap(fleet.root.parent / "outside" / "secret.mp4")
    text = f"ffconcat version 1.0\nfile /etc/passwd\nfile '{trap}'\nfile ../outside/secret.mp4\n"
    (fleet.root / "list.ffconcat").write_text(text)
    return fleet.uri("list.ffconcat")


def _symlink(fleet: Fleet) -> str:
    (fleet.root / "link.mp4").symlink_to("/etc/passwd")  # inside the root, pointing out of it
    return fleet.uri("link.mp4")


def _y4m(fleet: Fleet) -> str:
    header = b"YUV4MPEG2 W12000 H12000 F25:1 Ip A1:1 C420jpeg\nFRAME\n"
    (fleet.root / "big.y4m").write_bytes(header + b"\x80" * 4096)
    return fleet.uri("big.y4m")


HOSTILE: list[tuple[str, Callable[[Fleet], str], str]] = [
    ("hls", _hls, "not an allowed media format"),
    ("concat", _concat, "not an allowed media format"),
    ("dotdot", lambda f: f"file://{f.root}/../outside/x.mp4", "contains '..'"),
    ("dotdot-etc", lambda f: f"file://{f.root}/../../../../../../etc/passwd", "contains '..'"),
    ("encoded", lambda f: f"file://{f.root}/%2e%2e/outside/x.mp4", "contains '..'"),
    ("outside", lambda f: "file:///etc/passwd", "outside the allowed roots"),
    ("symlink", _symlink, "outside the allowed roots"),
    ("huge", _y4m, "12000x12000 (144000000 pixels), over the limit"),
]


@pytest.mark.parametrize(("name", "make", "needle"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_hostile_input_fails_cleanly(
    fleet: Fleet, name: str, make: Callable[[Fleet], str], needle: str
) -> None:
    out = fleet.root / "out" / f"hostile-{name}.mp4"
    op = {"op": "transcode", "codec": "h264", "preset": "ultrafast"}
    failed = await fleet.failure(f"hostile-{name}", make(fleet), op, out.as_uri())
    assert needle in failed["reason"], failed["reason"]
    assert "longer than" not in failed["reason"]  # refused, not stuck on a trap
    assert not out.exists()
    # The encode starts beside the probe (daemon.ops.beside) and the probe's refusal stops it;
    # until then it reads the input under the same guards as the probe, which refuse these too.
    argv = fleet.command(f"hostile-{name}")
    if "-i" in argv:
        guards = set(argv[: argv.index("-i")])
        assert {"-protocol_whitelist", "-format_whitelist", "-max_pixels"} <= guards, argv


@pytest.mark.parametrize(
    ("name", "src"),
    [("protocol", "concat:/etc/passwd|/etc/hosts"), ("lavfi", "lavfi:testsrc=size=64x64")],
)
async def test_other_input_schemes_fail_at_decode(fleet: Fleet, name: str, src: str) -> None:
    out = fleet.root / "out" / f"scheme-{name}.mp4"
    op = {"op": "transcode", "codec": "h264", "preset": "ultrafast"}
    evts = await fleet.run(f"scheme-{name}", src, op, out.as_uri())
    failed = [e for e in evts if e["kind"] == "failed"]
    assert failed and failed[-1]["final"] and failed[-1]["error_kind"] == "permanent", failed
    assert "at `$.input`" in failed[-1]["reason"], failed[-1]["reason"]
    assert "accepted" not in kinds(evts)  # the job schema refused it: no node ever took it
    assert not out.exists()


@pytest.mark.parametrize("name", ["-y.mp4", "concat:x|y.mp4", "-i 'a b';$(x).mp4"])
async def test_option_and_protocol_like_names_are_plain_files(
    fleet: Fleet, ffmpeg_tools: FfmpegTools, name: str
) -> None:
    src = fleet.root / name
    await asyncio.to_thread(shutil.copyfile, fleet.root / "clip.mp4", src)
    out = fleet.root / "out" / name
    job_id = "odd-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    op = {"op": "transcode", "codec": "h264", "preset": "ultrafast", "height": 120}
    result = await fleet.result(job_id, src.as_uri(), op, out.as_uri())
    [output] = result["outputs"]
    await _matches_file(output, out)
    argv = fleet.command(job_id)
    assert f"file:{src}" in argv  # the input pinned to the file protocol, by absolute path
    assert name not in argv and str(src) not in argv  # never a bare name ffmpeg could misread
    info = await probe_media(ffmpeg_tools, out)
    assert (info.streams[0].width, info.streams[0].height) == (160, 120)
