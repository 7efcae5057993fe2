"""The GPU paths on a real GPU machine, in one bounded run that prints JSON.

What it reports, using the daemon's own code (nothing here is a second implementation):
- `gpus`: NVML's view of each GPU (daemon.probe.gpu): NVENC/NVDEC engines, NVENC codecs.
- `ffmpeg`: the build's GPU features (cuda hwaccel, scale_cuda, libvmaf_cuda, NVENC encoders).
- `test_encodes`: the probe's test encode of every NVENC encoder pinned to every GPU (`-gpu N`),
  passed or the reason it failed (an H200 has NVDEC but no NVENC: every one fails there).
- `sessions`: the session-cap probe on each GPU where an NVENC encoder passed.
- `ladder`: the package operation's NVENC ladder argv (one decode, scale_cuda per rung) run once
  on a generated 1080p clip, on the first GPU whose H.264 NVENC passed; else skipped, saying why.
- `cuda_decode_scale`: NVDEC decode plus scale_cuda on each GPU (what an H200 can do).
- `vmaf_cuda`: the analyze operation's libvmaf_cuda argv on the clip against itself, if built.
On a machine without NVIDIA it prints the empty answer and exits 0. Every ffmpeg run has a
deadline; the whole check takes well under two minutes.
Run: `.venv/bin/python -m bench.gpu_check [--ffmpeg PATH]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from daemon.media.paths import ffmpeg_arg
from daemon.ops.analyze import cuda_vmaf_args, cuda_vmaf_possible
from daemon.ops.ladder_args import LadderHw, cuda_frames_possible, package_args
from daemon.probe.candidates import Candidate
from daemon.probe.ffmpeg_caps import probe_ffmpeg
from daemon.probe.gpu import CUDA_ENV, Nvml
from daemon.probe.run import run_capture
from daemon.probe.sessions import probe_session_limit
from daemon.probe.verify import failure_reason, summarize, verify_each
from schemas.operations import Analyze, Package, Rung
from schemas.results import StreamInfo

DEADLINE = 60.0
NVENC = ("h264_nvenc", "hevc_nvenc", "av1_nvenc")
LADDER = Package(ladder=[Rung(height=1080, bitrate_kbps=5000), Rung(height=720, bitrate_kbps=3000),
                         Rung(height=360, bitrate_kbps=800)])  # fmt: skip


def _ffmpeg(given: str | None) -> str:
    if given:
        return given
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg  # the test suite's build, when the machine has none of its own

    return str(imageio_ffmpeg.get_ffmpeg_exe())


async def _run(argv: list[str]) -> dict[str, Any]:
    started = time.monotonic()
    r = await run_capture(argv, DEADLINE, CUDA_ENV)
    out: dict[str, Any] = {"ok": r.ok, "wall_s": round(time.monotonic() - started, 2)}
    if not r.ok:
        out["reason"] = failure_reason(r.stderr, r.returncode)
    return out


async def _clip(ffmpeg: str, path: Path) -> dict[str, Any]:
    """Two seconds of 1080p H.264 with AAC, made on the CPU."""
    return await _run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-y",
                       "-f", "lavfi", "-i", "testsrc2=size=1920x1080:rate=25", "-f", "lavfi",
                       "-i", "sine=frequency=440", "-t", "2", "-c:v", "libx264", "-preset",
                       "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)])  # fmt: skip


async def _decode_scale(ffmpeg: str, clip: Path, gpu: int) -> dict[str, Any]:
    """NVDEC decode and scale_cuda on GPU `gpu`, downloaded at the end."""
    scale = "scale_cuda=1280:720:format=yuv420p,hwdownload,format=yuv420p"
    return await _run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-hwaccel",
                       "cuda", "-hwaccel_output_format", "cuda", "-hwaccel_device", str(gpu),
                       "-i", str(clip), "-vf", scale, "-f", "null", "-"])  # fmt: skip


async def check(ffmpeg: str) -> dict[str, Any]:
    nvml = await Nvml.open()
    try:
        gpus, notes = await nvml.probe()
    finally:
        await nvml.close()
    info = await probe_ffmpeg(ffmpeg)
    filters, hwaccels = set(info.filters), set(info.hwaccels)
    report: dict[str, Any] = {
        "gpus": [msgspec.to_builtins(g) for g in gpus],
        "gpu_notes": notes,
        "ffmpeg": {
            "path": ffmpeg, "version": info.version, "cuda_hwaccel": "cuda" in hwaccels,
            "scale_cuda": "scale_cuda" in filters, "libvmaf_cuda": "libvmaf_cuda" in filters,
            "nvenc_encoders": [e for e in info.encoders if e.endswith("_nvenc")],
        },
    }  # fmt: skip
    if not gpus:
        return report
    built = [e for e in NVENC if e in info.encoders]
    cands = [Candidate(name, "nvenc", gpu=g.index) for name in built for g in gpus]
    outcomes = await verify_each(ffmpeg, cands)
    report["test_encodes"] = [
        {"gpu": c.gpu, "encoder": c.name, "ok": why is None, "reason": why} for c, why in outcomes
    ]
    verified, dropped = summarize(outcomes)
    report["verified"], report["dropped"] = verified, [msgspec.to_builtins(d) for d in dropped]
    passed: dict[int, list[str]] = {}
    for c, why in outcomes:
        if why is None and c.gpu is not None:
            passed.setdefault(c.gpu, []).append(c.name)
    report["sessions"] = {}
    for i, names in passed.items():
        limit, how = await probe_session_limit(ffmpeg, i, 12, encoder=names[0])
        report["sessions"][str(i)] = {"limit": limit, "how": how}
    with tempfile.TemporaryDirectory(prefix="flotilla-gpu-") as tmp:
        clip = Path(tmp) / "clip.mp4"
        report["clip"] = await _clip(ffmpeg, clip)
        if not report["clip"]["ok"]:
            return report
        report["cuda_decode_scale"] = {str(g.index): await _decode_scale(ffmpeg, clip, g.index)
                                       for g in gpus}  # fmt: skip
        on = next((i for i, names in passed.items() if "h264_nvenc" in names), None)
        if on is None:
            report["ladder"] = {"ok": False, "skipped": "no GPU passed an h264_nvenc test encode"}
        else:
            out = Path(tmp) / "pkg"
            out.mkdir()
            hw = LadderHw(gpu=on, cuda_frames=cuda_frames_possible(hwaccels, filters))
            args = package_args(LADDER, list(LADDER.ladder), clip, out, 50, True, 2,
                                size=(1920, 1080), hw=hw)  # fmt: skip
            run = await _run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *args])
            playlists = sorted(str(p.relative_to(out)) for p in out.rglob("*.m3u8"))
            report["ladder"] = {**run, "gpu": on, "cuda_frames": hw.cuda_frames,
                                "argv": args, "playlists": playlists}  # fmt: skip
        video = StreamInfo(index=0, type="video", codec="h264", width=1920, height=1080)
        op = Analyze(reference=f"file://{clip}")
        if cuda_vmaf_possible(op, video, hwaccels, filters):
            args = cuda_vmaf_args(op, video, video, "vmaf_v0.6.1", Path(tmp) / "vmaf.json", (),
                                  (ffmpeg_arg(clip), ffmpeg_arg(clip), []))  # fmt: skip
            run = await _run([ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", *args])
            report["vmaf_cuda"] = {**run, "argv": args}
        else:
            report["vmaf_cuda"] = {"ok": False, "skipped": "the build lacks libvmaf_cuda"}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ffmpeg", help="ffmpeg binary (default: on PATH, else imageio-ffmpeg's)")
    args = parser.parse_args()
    report = asyncio.run(check(_ffmpeg(args.ffmpeg)))
    json.dump(report, sys.stdout, indent=1, default=str)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
