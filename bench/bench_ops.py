"""Each operation on a short 1080p clip: through the daemon's op code vs. the same ffmpeg by hand.

For every operation it prints the wall time and realtime factor (media seconds / wall seconds)
of the op (pre-probe, limits, guards, progress parsing, staging, hashing included) next to the
same ffmpeg work run directly, and the ratio op/direct. The direct commands are the op's own
argv where the op reports it (transcode) or is built by its public pure helpers (package,
analyze), else the equivalent hand-written command. Run: `.venv/bin/python -m bench.bench_ops
[--seconds 4] [--rounds 1] [--only audio]`. Op and direct runs alternate, round by round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from daemon.ffmpeg.progress import ProgressUpdate
from daemon.ffmpeg.tools import FfmpegTools, find_tools
from daemon.job.handle import JobHandle
from daemon.media.paths import uri_of
from daemon.media.probe import probe_media
from daemon.ops import run_operation
from daemon.ops.analyze import filter_graph
from daemon.ops.context import JobContext
from daemon.ops.ladder_args import package_args
from schemas.jobs import JobSpec
from schemas.operations import Analyze, Operation, Package, Probe, Rung, Thumbnail, Transcode
from schemas.videoopts import Crop

SOFTWARE = frozenset({"libx264", "aac", "mjpeg"})
THREADS = 2


async def _sh(*argv: str) -> float:
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"ffmpeg failed: {argv}\n{err.decode(errors='replace')[-2000:]}")
    return time.perf_counter() - start


async def _sink(update: ProgressUpdate) -> None:
    return None


class Bench:
    def __init__(self, tools: FfmpegTools, root: Path, src: Path, seconds: float) -> None:
        self.tools, self.root, self.src, self.seconds = tools, root, src, seconds
        self.n = 0
        self.last_argv: list[str] = []

    async def op(self, op: Operation, output: str | None) -> float:
        self.n += 1
        spec = JobSpec(job_id=f"b{self.n}", input=uri_of(self.src), output=output, operation=op)
        scratch = self.root / f"scratch-{self.n}"
        scratch.mkdir()

        async def on_command(encoder: str | None, argv: list[str]) -> None:
            self.last_argv = argv

        ctx = JobContext(
            handle=JobHandle(spec.job_id), spec=spec, scratch=scratch, tools=self.tools,
            verified_encoders=SOFTWARE, hwaccels=frozenset(), threads=THREADS,
            allowed_roots=[self.root], progress=_sink, on_command=on_command,
        )  # fmt: skip
        start = time.perf_counter()
        await run_operation(ctx)
        return time.perf_counter() - start

    def out(self, name: str) -> str:
        return uri_of(self.root / f"{self.n + 1}-{name}")

    def direct_path(self, name: str) -> Path:
        self.n += 1
        return self.root / f"direct-{self.n}-{name}"


async def main(seconds: float, rounds: int, only: list[str]) -> None:
    tools = find_tools()
    ff = [tools.ffmpeg, "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        src = root / "src.mp4"
        await _sh(
            *ff, "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=25:duration={seconds}",
            "-f", "lavfi", "-i", f"sine=duration={seconds}", "-c:v", "libx264", "-preset",
            "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(src),
        )  # fmt: skip
        b = Bench(tools, root, src, seconds)
        distorted = root / "distorted.mp4"
        await _sh(*ff, "-i", str(src), "-c:v", "libx264", "-crf", "40", "-an", str(distorted))
        info = await probe_media(tools, src)
        video = next(s for s in info.streams if s.type == "video")
        cases: list[tuple[str, Callable[[], Awaitable[float]], Callable[[], Awaitable[float]]]] = []

        tc = Transcode(codec="h264", height=720, preset="veryfast")

        async def transcode_direct() -> float:
            return await _sh(*b.last_argv[:-1], f"file:{b.direct_path('t.mp4')}")

        cases.append(("transcode 1080p->720p", lambda: b.op(tc, b.out("t.mp4")), transcode_direct))

        # The options real pipelines use (trim, crop, deinterlace, frame rate, GOP, profile).
        opts = Transcode(
            codec="h264", height=720, preset="veryfast", start_seconds=0.5,
            duration_seconds=seconds - 1.0, crop=Crop(width=1440, height=1080, x=240, y=0),
            deinterlace=True, fps=24, gop_size=48, closed_gop=True, profile="high",
        )  # fmt: skip

        async def options_direct() -> float:
            return await _sh(*b.last_argv[:-1], f"file:{b.direct_path('o.mp4')}")

        cases.append(("transcode, options", lambda: b.op(opts, b.out("o.mp4")), options_direct))

        audio = Transcode(audio_bitrate_kbps=96)  # the container (m4a) makes it audio-only

        async def audio_direct() -> float:
            return await _sh(*b.last_argv[:-1], f"file:{b.direct_path('a.m4a')}")

        cases.append(("audio-only m4a", lambda: b.op(audio, b.out("a.m4a")), audio_direct))

        async def probe_direct() -> float:
            return await _sh(*ff, "-threads", str(THREADS), "-i", str(src), "-map", "0:v?",
                             "-map", "0:a?", "-f", "null", "-")  # fmt: skip

        cases.append(("probe deep", lambda: b.op(Probe(deep=True), None), probe_direct))

        sprite = Thumbnail(sprite=True, tiles=16, columns=4, width=320)

        async def sprite_direct() -> float:
            vf = f"fps=16/{seconds!r},scale=320:180,tile=4x4"
            return await _sh(*ff, "-threads", str(THREADS), "-i", str(src), "-map", "0:v:0",
                             "-vf", vf, "-frames:v", "1", "-c:v", "mjpeg", "-q:v", "3", "-f",
                             "image2", "-update", "1", str(b.direct_path("s.jpg")))  # fmt: skip

        cases.append(("thumbnail sprite", lambda: b.op(sprite, b.out("s.jpg")), sprite_direct))

        ladder = [Rung(height=720, bitrate_kbps=2500), Rung(height=360, bitrate_kbps=800)]
        pkg = Package(ladder=ladder, segment_seconds=2.0, preset="veryfast")

        async def package_direct() -> float:
            out = b.direct_path("pkg")
            out.mkdir()
            args = package_args(pkg, ladder, src, out, 50, True, THREADS)
            return await _sh(*ff, *args)

        cases.append(("package HLS 2 rungs", lambda: b.op(pkg, b.out("pkg")), package_direct))

        an = Analyze(reference=uri_of(src), vmaf=True, psnr=True, ssim=True)

        async def analyze_op() -> float:
            b.src = distorted
            try:
                return await b.op(an, b.out("vmaf.json"))
            finally:
                b.src = src

        async def analyze_direct() -> float:
            graph = filter_graph(an, video, video, "vmaf_v0.6.1", b.direct_path("v.json"), THREADS)
            return await _sh(*ff, "-filter_threads", str(THREADS), "-i", str(distorted), "-i",
                             str(src), "-filter_complex", graph, "-map", "[out]", "-an", "-f",
                             "null", "-")  # fmt: skip

        cases.append(("analyze vmaf+psnr+ssim", analyze_op, analyze_direct))

        print(f"1080p clip, {seconds:g} s, {rounds} round(s), median wall; rtf = media s / wall s")
        head = ("operation", "op s", "direct s", "op rtf", "dir rtf", "ratio")
        print(f"{head[0]:26} {head[1]:>7} {head[2]:>9} {head[3]:>7} {head[4]:>8} {head[5]:>6}")
        for name, via_op, direct in cases:
            if only and not any(word in name for word in only):
                continue
            op_ts: list[float] = []
            dir_ts: list[float] = []
            for i in range(rounds):  # alternated, so a drift in the machine's load hits both
                if i % 2:
                    dir_ts.append(await direct())
                    op_ts.append(await via_op())
                else:
                    op_ts.append(await via_op())
                    dir_ts.append(await direct())
            op_t, dir_t = statistics.median(op_ts), statistics.median(dir_ts)
            print(
                f"{name:26} {op_t:7.3f} {dir_t:9.3f} {seconds / op_t:7.2f} "
                f"{seconds / dir_t:8.2f} {op_t / dir_t:6.3f}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length")
    parser.add_argument("--rounds", type=int, default=1, help="runs per side (median)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run the cases whose name holds this word (repeatable)",
    )
    ns = parser.parse_args()
    uvloop.run(main(ns.seconds, ns.rounds, ns.only))  # the daemon's loop: its spawns cost the same
