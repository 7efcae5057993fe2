"""The package ladder's argument vector, pure: one decode split into every rung, scaled and
encoded per rung, into the HLS or DASH muxer.

On NVENC the whole ladder runs on one GPU: decoded there (`-hwaccel cuda`, frames kept in GPU
memory with `-hwaccel_output_format cuda`), split, scaled with `scale_cuda` per rung and encoded
by NVENC on the same GPU (`-gpu`), so no frame crosses the bus. Without `scale_cuda` or the cuda
hwaccel in the build, frames are decoded and scaled on the CPU and NVENC still encodes.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from daemon.media.paths import ffmpeg_arg
from daemon.ops.encoders import preset_args
from daemon.ops.subtitles import hls_language
from daemon.ops.videograph import TONEMAP
from schemas.operations import Package, Rung

SOFTWARE = {"h264": "libx264", "hevc": "libx265"}


@dataclass(frozen=True, slots=True)
class LadderHw:
    """An NVENC ladder's device: the GPU (None: the driver's pick) and whether frames stay on it."""

    gpu: int | None
    cuda_frames: bool


@dataclass(frozen=True, slots=True)
class AltAudio:
    """One alternate audio track: input audio track `track` encoded to AAC on its own."""

    track: int
    kbps: int
    channels: int | None
    language: str | None
    name: str
    default: bool


#: The HLS AUDIO group every video rung refers to.
AUDIO_GROUP = "aud"


def cuda_frames_possible(hwaccels: AbstractSet[str], filters: AbstractSet[str]) -> bool:
    return "cuda" in hwaccels and "scale_cuda" in filters


def rung_width(rung: Rung, src_w: int, src_h: int) -> int:
    return rung.width or max(2, round(src_w * rung.height / src_h / 2) * 2)


def ladder_graph(
    rungs: list[Rung], src_w: int, src_h: int, hw: LadderHw | None, tonemap: bool = False
) -> str:
    """One decode split per rung; `tonemap`: HDR made SDR once, before the split, and every
    rung tagged BT.709 (ffmpeg takes the colour tags from the frames)."""
    n = len(rungs)
    labels = "".join(f"[s{i}]" for i in range(n))
    graph = [f"[0:v:0]{TONEMAP + ',' if tonemap else ''}split={n}{labels}"]
    tags = ",setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709" * tonemap
    for i, r in enumerate(rungs):
        if hw is not None and hw.cuda_frames:
            w = rung_width(r, src_w, src_h)
            graph.append(f"[s{i}]scale_cuda={w}:{r.height}:format=yuv420p[v{i}]")
        else:
            graph.append(f"[s{i}]scale={r.width or -2}:{r.height},format=yuv420p{tags}[v{i}]")
    return ";".join(graph)


def decode_args(hw: LadderHw | None) -> list[str]:
    if hw is None or not hw.cuda_frames:
        return []
    pin = ["-hwaccel_device", str(hw.gpu)] if hw.gpu is not None else []
    return ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda", *pin]


def rung_encoder(rung: Rung, hw: LadderHw | None) -> str:
    return f"{rung.codec}_nvenc" if hw is not None else SOFTWARE[rung.codec]


def package_args(
    op: Package,
    rungs: list[Rung],
    src: Path,
    out: Path,
    gop: int,
    audio: bool,
    threads: int,
    guard: tuple[str, ...] = ("-protocol_whitelist", "file"),
    *,
    size: tuple[int, int] = (0, 0),
    hw: LadderHw | None = None,
    subtitles: tuple[str, ...] = (),
    alt_audio: tuple[AltAudio, ...] = (),
    tonemap: bool = False,
) -> list[str]:
    """`size` is the source's (width, height), needed to size CUDA-scaled rungs exactly;
    `subtitles`: outputs after the package's, HLS or DASH (daemon.ops.subtitles.webvtt_outputs)."""
    n = len(rungs)
    args = ["-filter_threads", str(threads), "-threads", str(threads), *decode_args(hw)]
    args += [*guard, "-i", ffmpeg_arg(src)]
    if tonemap and hw is not None and hw.cuda_frames:
        raise ValueError("tone-mapping runs on the CPU: frames cannot stay on the GPU")
    args += ["-filter_complex", ladder_graph(rungs, size[0] or 2, size[1] or 2, hw, tonemap)]
    args += [a for i in range(n) for a in ("-map", f"[v{i}]")]
    for i, r in enumerate(rungs):
        kbps = r.bitrate_kbps
        args += [f"-c:v:{i}", rung_encoder(r, hw), f"-b:v:{i}", f"{kbps}k"]
        if r.codec == "hevc":  # Apple players want the hvc1 sample entry
            args += [f"-tag:v:{i}", "hvc1"]
        args += [f"-maxrate:v:{i}", f"{kbps * 107 // 100}k", f"-bufsize:v:{i}", f"{kbps * 2}k"]
    if hw is not None:
        args += preset_args("h264_nvenc", op.preset)
        # Forced keyframes become IDR frames, scene cuts add none: segments stay aligned.
        args += ["-g", str(gop), "-forced-idr", "1", "-no-scenecut", "1"]
        args += ["-gpu", str(hw.gpu)] if hw.gpu is not None else []
    else:
        args += ["-preset", op.preset, "-g", str(gop), "-keyint_min", str(gop)]
        args += ["-sc_threshold", "0"]
    args += ["-force_key_frames", f"expr:gte(t,n_forced*{op.segment_seconds!r})"]
    if hw is None and any(r.codec == "hevc" for r in rungs):  # x265 takes its GOP here
        args += ["-x265-params", f"keyint={gop}:min-keyint={gop}:scenecut=0:log-level=warning"]
    if alt_audio:
        args += _alt_audio_args(alt_audio)
        if op.dash:
            return [*args, *_dash_args(op, out, None, _alt_audio_sets(alt_audio, n)), *subtitles]
        stream_map = [f"v:{i},agroup:{AUDIO_GROUP}" for i in range(n)]
        for k, a in enumerate(alt_audio):
            lang = f",language:{a.language}" if a.language else ""
            stream_map.append(f"a:{k},agroup:{AUDIO_GROUP}{lang}" + (",default:yes" * a.default))
        return args + _hls_args(op, out, stream_map, subtitles)
    with_audio = [r for r in rungs if audio and r.audio_bitrate_kbps is not None]
    if op.dash:
        top = max((r.audio_bitrate_kbps or 0) for r in with_audio) if with_audio else None
        return [*args, *_dash_args(op, out, top), *subtitles]
    stream_map = []
    for i, r in enumerate(rungs):
        if r in with_audio:
            j = with_audio.index(r)
            args += ["-map", "0:a:0", f"-c:a:{j}", "aac", f"-b:a:{j}", f"{r.audio_bitrate_kbps}k"]
            stream_map.append(f"v:{i},a:{j}")
        else:
            stream_map.append(f"v:{i}")
    return args + _hls_args(op, out, stream_map, subtitles)


def _hls_args(
    op: Package, out: Path, stream_map: list[str], subtitles: tuple[str, ...]
) -> list[str]:
    args = ["-f", "hls", "-hls_time", f"{op.segment_seconds!r}", "-hls_playlist_type", "vod"]
    args += ["-hls_segment_type", op.hls_segment_type, "-hls_flags", "independent_segments"]
    args += ["-master_pl_name", "master.m3u8", "-var_stream_map", " ".join(stream_map)]
    ext = "m4s" if op.hls_segment_type == "fmp4" else "ts"
    # Plain absolute paths: the hls muxer derives init/segment names from them (no `file:`).
    args += ["-hls_segment_filename", f"{out}/stream_%v/seg_%05d.{ext}"]
    return [*args, f"{out}/stream_%v/index.m3u8", *subtitles]


def _alt_audio_args(alt_audio: tuple[AltAudio, ...]) -> list[str]:
    """Each alternate track mapped, encoded and tagged on its own (after the video outputs)."""
    args: list[str] = []
    for k, a in enumerate(alt_audio):
        args += ["-map", f"0:a:{a.track}", f"-c:a:{k}", "aac", f"-b:a:{k}", f"{a.kbps}k"]
        if a.channels is not None:
            args += [f"-ac:a:{k}", str(a.channels)]
        args += [f"-metadata:s:a:{k}", f"language={a.language or 'und'}"]
    return args


def _alt_audio_sets(alt_audio: tuple[AltAudio, ...], videos: int) -> str:
    """DASH adaptation sets: the video, then one per input track (its bitrates are switchable
    representations of one track; two tracks, e.g. two languages, are not)."""
    tracks: dict[int, list[int]] = {}
    for k, a in enumerate(alt_audio):
        tracks.setdefault(a.track, []).append(videos + k)
    sets = ["id=0,streams=v"]
    for i, streams in enumerate(tracks.values(), start=1):
        sets.append(f"id={i},streams={','.join(map(str, streams))}")
    return " ".join(sets)


def _dash_args(
    op: Package, out: Path, audio_kbps: int | None, sets: str = "id=0,streams=v"
) -> list[str]:
    args = []
    if audio_kbps is not None:
        args += ["-map", "0:a:0", "-c:a", "aac", "-b:a", f"{audio_kbps}k"]
        sets += " id=1,streams=a"
    args += ["-f", "dash", "-seg_duration", f"{op.segment_seconds!r}", "-use_template", "1"]
    args += ["-use_timeline", "1", "-adaptation_sets", sets]
    if op.hls:
        args += ["-hls_playlist", "1"]
    return [*args, f"{out}/manifest.mpd"]


_AUDIO_MEDIA = re.compile(r'^#EXT-X-MEDIA:TYPE=AUDIO,.*URI="stream_(\d+)/.*$', re.M)
_ATTR = r'({}=)("[^"]*"|[^,]*)'


def with_audio_names(master: str, videos: int, alt_audio: tuple[AltAudio, ...]) -> str:
    """The master playlist with each alternate track's NAME (the label players show) and its
    LANGUAGE as BCP 47: the hls muxer writes `audio_N` and the ISO 639-2 code as given."""

    def fix(m: re.Match[str]) -> str:
        k = int(m[1]) - videos
        if not 0 <= k < len(alt_audio):
            return m[0]
        a = alt_audio[k]
        line = re.sub(_ATTR.format("NAME"), lambda n: f'{n[1]}"{a.name}"', m[0], count=1)
        tag = hls_language(a.language)[0]
        if tag:
            line = re.sub(_ATTR.format("LANGUAGE"), lambda n: f'{n[1]}"{tag}"', line, count=1)
        return line

    return _AUDIO_MEDIA.sub(fix, master)
