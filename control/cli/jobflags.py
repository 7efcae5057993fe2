"""`flotilla submit`'s argument forms: a job file, or one flag form per operation, to a JobSpec."""

from __future__ import annotations

import argparse
import json
import re
import secrets
import sys
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import msgspec

from control.errors import BadInput
from schemas.audioopts import AudioLayout
from schemas.jobs import JobSpec
from schemas.operations import (
    PERTITLE_CODECS,
    QUALITY_METRICS,
    AudioCodec,
    VideoCodec,
    fixed_ladder_kbps,
)
from schemas.videoopts import HdrMode, Level, PixFmt, Position, Profile, SubtitleMode

FORMS = ("file", "transcode", "analyze", "package", "pertitle", "probe", "thumbnail")


#: Flags whose values start with `-` (`--loudness -16:-1.5`), which argparse takes for a flag.
_DASHED_VALUES = ("--loudness",)


def _join_dashed(argv: list[str]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _DASHED_VALUES:
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def submit_argv(argv: list[str]) -> list[str]:
    """`submit FILE …` becomes `submit file FILE …`, so one subparser serves every form."""
    argv = _join_dashed(argv)
    pos = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if pos is None or argv[pos] != "submit" or pos + 1 >= len(argv):
        return argv
    rest = argv[pos + 1 :]
    if rest[0] in (*FORMS, "-h", "--help"):
        return argv
    # Flags first (`submit --wait job.toml`) are the file form's, unless an operation follows.
    if rest[0] != "-" and rest[0].startswith("-") and any(a in FORMS for a in rest):
        return argv
    return [*argv[: pos + 1], "file", *rest]


def new_job_id() -> str:
    """Readable and sortable: `job-20261129-060312-3fa9c1`."""
    return time.strftime("job-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def file_uri(value: str) -> str:
    """A local path as an absolute `file://` URI; a value that already has a scheme is kept."""
    if "://" in value:
        return value
    return Path(value).expanduser().resolve().as_uri()


def local_path(uri: str) -> Path | None:
    """The local file behind a `file://` URI or a bare path; None for other schemes."""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlsplit

        return Path(unquote(urlsplit(uri).path))
    return None if "://" in uri else Path(uri).expanduser().resolve()


def load_job_file(name: str) -> dict[str, Any]:
    """The job document in a JSON or TOML file (`-` reads stdin), as a plain dict."""
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text()
    except OSError as exc:
        raise BadInput(f"cannot read job file {name}: {exc.strerror or exc}") from exc
    label = "stdin" if name == "-" else name
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"job file {label} is not valid JSON: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"job file {label} is neither JSON nor valid TOML: {exc}") from exc
    if not isinstance(data, dict):
        raise BadInput(f"job file {label} must hold one JSON object")
    return data


def to_spec(doc: dict[str, Any], args: argparse.Namespace, label: str) -> JobSpec:
    """Apply the common flags (they win over the document), then validate the whole spec."""
    doc = dict(doc)
    doc["job_id"] = args.job_id or doc.get("job_id") or new_job_id()
    for flag in ("tenant", "priority"):
        if getattr(args, flag) is not None:
            doc[flag] = getattr(args, flag)
    if args.pool is not None:
        doc["requirements"] = {**doc.get("requirements", {}), "pool": args.pool}
    if getattr(args, "deadline", None) is not None:
        doc["deadline"] = deadline_value(args.deadline)
    try:
        return msgspec.convert(doc, JobSpec)
    except (msgspec.ValidationError, ValueError) as exc:
        raise BadInput(f"invalid job {label}: {exc}") from exc


_IN = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def deadline_value(text: str, now: float | None = None) -> str:
    """`--deadline`: a duration from now (`90m`, `2h`) or an ISO 8601 time, as RFC 3339 UTC."""
    text = text.strip()
    match = _IN.match(text)
    if match is not None:
        at = (time.time() if now is None else now) + float(match[1]) * _UNIT_S[match[2]]
        return datetime.fromtimestamp(at, UTC).isoformat().replace("+00:00", "Z")
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise BadInput(
            f"--deadline {text!r}: write a time like 2026-12-03T18:00:00Z or a duration like 2h"
        ) from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ladder(text: str) -> list[dict[str, int]]:
    rungs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        height, _, kbps = part.partition(":")
        try:
            h = int(height)
            rate = int(kbps) if kbps else fixed_ladder_kbps(h)  # typical H.264 bitrates
        except ValueError:
            raise BadInput(f"--ladder {text!r}: write heights like 1080,720 or 720:2800") from None
        rungs.append({"height": h, "bitrate_kbps": rate})
    return rungs


def _audio_rendition(text: str) -> dict[str, object]:
    """`eng`, `fra:96`, `1:64:mono`, `eng:128::English (AD)`: the track (a language or an
    index among the input's audio tracks), then kbps, layout and the label players show."""
    track, kbps, layout, name = [*text.split(":", 3), "", "", ""][:4]
    doc: dict[str, object] = {"stream": int(track)} if track.isdigit() else {"language": track}
    try:
        doc |= {"bitrate_kbps": int(kbps)} if kbps else {}
    except ValueError:
        raise BadInput(f"--audio-rendition {text!r}: write TRACK[:KBPS[:LAYOUT[:NAME]]], e.g. "
                       "eng:128 or 1:64:mono") from None  # fmt: skip
    return doc | ({"layout": layout} if layout else {}) | ({"name": name} if name else {})


def _pertitle_rungs(text: str) -> list[dict[str, int]]:
    """`1080,720:3000`: heights, each with an optional VBV cap (kbps) for its final encode."""
    rungs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        height, _, kbps = part.partition(":")
        try:
            rung = {"height": int(height)} | ({"max_bitrate_kbps": int(kbps)} if kbps else {})
        except ValueError:
            raise BadInput(f"--rungs {text!r}: write heights like 1080,720 or 720:3000") from None
        rungs.append(rung)
    return rungs


def _crop(text: str) -> dict[str, int]:
    try:
        width, height, *corner = (int(v) for v in text.split(":"))
    except ValueError:
        raise BadInput(f"--crop {text!r}: write W:H or W:H:X:Y (pixels)") from None
    if len(corner) not in (0, 2):
        raise BadInput(f"--crop {text!r}: write W:H or W:H:X:Y (pixels)")
    x, y = corner or (0, 0)
    return {"width": width, "height": height, "x": x, "y": y}


def loudness_value(text: str) -> dict[str, float]:
    """`--loudness I[:TP[:LRA]]`: EBU R128 targets; the schema checks the ranges."""
    try:
        values = [float(v) for v in text.split(":")]
    except ValueError:
        values = []
    if not 1 <= len(values) <= 3:
        raise BadInput(f"--loudness {text!r}: write I[:TP[:LRA]], e.g. -23 or -16:-1.5:11")
    return dict(zip(("integrated", "true_peak", "lra"), values, strict=False))


def _picture_options(args: argparse.Namespace) -> dict[str, Any]:
    """The transcode form's picture flags, named as in the schema (it validates them)."""
    op: dict[str, Any] = {}
    for flag, key in (("start", "start_seconds"), ("duration", "duration_seconds"),
                      ("gop", "gop_size"), ("profile", "profile"), ("level", "level"),
                      ("pix_fmt", "pix_fmt"), ("fps", "fps"), ("audio_codec", "audio_codec"),
                      ("audio_layout", "audio_layout"), ("sample_rate", "audio_sample_rate"),
                      ("audio_language", "audio_language")):  # fmt: skip
        if getattr(args, flag) is not None:
            op[key] = getattr(args, flag)
    if args.crop is not None:
        op["crop"] = _crop(args.crop)
    if args.all_audio:
        op["audio_tracks"] = "all"
    if args.loudness is not None:
        op["loudness"] = loudness_value(args.loudness)
    if args.deinterlace:
        op["deinterlace"] = True
    if args.closed_gop:
        op["closed_gop"] = True
    if args.hdr is not None:
        op["hdr"] = args.hdr
    if args.overlay is not None:
        op["overlay"] = {"image": file_uri(args.overlay), "position": args.overlay_position}
    if args.subtitles is not None:
        op["subtitles"] = args.subtitles
    if args.burn_subtitles is not None:
        op["burn_subtitles"] = args.burn_subtitles
    return op


def _subtitle_track(text: str) -> int | str:
    """`--burn-subtitles 1` (the second subtitle track) or `--burn-subtitles fra`."""
    return int(text) if text.isdigit() else text


def flag_document(args: argparse.Namespace) -> dict[str, Any]:
    """The job document a flag form describes (paths become file:// URIs)."""
    form = args.form
    doc: dict[str, Any] = {"input": file_uri(args.input)}
    op: dict[str, Any] = {"op": form}
    if form == "transcode":
        doc["output"] = file_uri(args.output)
        op |= {"preset": args.preset} | ({"codec": args.codec} if args.codec else {})
        op |= {k: v for k, v in (("height", args.height), ("width", args.width)) if v}
        # The container (and webm's opus audio) follow OUTPUT's extension: the schema settles them.
        op |= _picture_options(args)
        if args.bitrate_kbps is not None:
            op["bitrate_kbps"] = args.bitrate_kbps
            op["rate_control"] = "capped_crf" if args.crf is not None else "vbr"
            op["crf"] = args.crf
        elif args.crf is not None:
            op["crf"] = args.crf
    elif form == "analyze":
        default_log = Path(args.input).with_suffix(".quality.json")
        doc["output"] = file_uri(args.output or str(default_log))
        op["reference"] = file_uri(args.reference)
        chosen = {m: getattr(args, m) for m in ("vmaf", "psnr", "ssim")}
        if any(chosen.values()):  # naming some metrics means only those
            op |= chosen
    elif form == "package":
        doc["output"] = file_uri(args.outdir)
        hls, dash = args.hls, args.dash
        op |= {"hls": hls or not dash, "dash": dash, "ladder": _ladder(args.ladder)}
        if args.subtitles is not None:
            op["subtitles"] = args.subtitles
        if args.audio_rendition:
            op["audio_renditions"] = [_audio_rendition(t) for t in args.audio_rendition]
        if args.hdr is not None:
            op["hdr"] = args.hdr
    elif form == "pertitle":
        doc["output"] = file_uri(args.outdir)
        op |= {"rungs": _pertitle_rungs(args.rungs), "codec": args.codec, "metric": args.metric,
               "hls": args.hls, "preset": args.preset}  # fmt: skip
        for flag in ("target", "samples", "sample_seconds", "crf_min", "crf_max", "subtitles"):
            if getattr(args, flag) is not None:
                op[flag] = getattr(args, flag)
    elif form == "probe":
        op["deep"] = args.deep
    elif form == "thumbnail":
        doc["output"] = file_uri(args.output)
        op |= {"sprite": args.sprite, "at_seconds": args.at}
    doc["operation"] = op
    return doc


def add_submit(sub: Any, common: Any) -> argparse.ArgumentParser:
    """`submit FILE` and `submit OPERATION …`; `common(p)` adds the shared flags to each form."""
    p: argparse.ArgumentParser = sub.add_parser(
        "submit", help="submit a job from a JSON/TOML file or from flags"
    )
    forms = p.add_subparsers(dest="form", required=True, metavar="FILE|OPERATION")
    f = forms.add_parser("file", help="a JSON or TOML job file (`-` reads stdin)")
    f.add_argument("path", metavar="FILE")
    t = forms.add_parser("transcode", help="re-encode INPUT into OUTPUT")
    t.add_argument("input")
    t.add_argument("output")
    t.add_argument(
        "--codec",
        choices=get_args(VideoCodec),
        help="default: h264, or none (no video) for an .m4a/.ogg/.mp3 OUTPUT",
    )
    t.add_argument("--height", type=int)
    t.add_argument("--width", type=int)
    t.add_argument("--crf", type=int)
    t.add_argument("--preset", default="medium")
    t.add_argument("--bitrate-kbps", type=int)
    t.add_argument("--start", type=float, metavar="SECONDS", help="trim: start this far in")
    t.add_argument("--duration", type=float, metavar="SECONDS", help="trim: keep this much")
    t.add_argument("--crop", metavar="W:H[:X:Y]", help="keep this window (source pixels)")
    t.add_argument("--deinterlace", action="store_true")
    t.add_argument("--fps", type=float)
    t.add_argument("--gop", type=int, metavar="FRAMES", help="a keyframe every FRAMES frames")
    t.add_argument("--closed-gop", action="store_true")
    t.add_argument("--profile", choices=get_args(Profile))
    t.add_argument("--level", choices=get_args(Level))
    t.add_argument("--pix-fmt", choices=get_args(PixFmt))
    t.add_argument("--audio-codec", choices=get_args(AudioCodec))
    t.add_argument("--audio-layout", choices=get_args(AudioLayout))
    t.add_argument("--sample-rate", type=int, help="audio sample rate (Hz)")
    t.add_argument("--audio-language", metavar="LANG", help="the audio track tagged LANG (fra)")
    t.add_argument("--all-audio", action="store_true", help="keep every audio track")
    t.add_argument("--loudness", metavar="I[:TP[:LRA]]", help="normalise audio to EBU R128 "
                   "targets: LUFS, true peak dBTP, range LU (default -1 and 7)")  # fmt: skip
    t.add_argument(
        "--hdr", choices=get_args(HdrMode), help="an HDR source: keep, or tone-map to SDR"
    )
    t.add_argument("--overlay", metavar="IMAGE", help="draw this still image over the video")
    t.add_argument("--overlay-position", default="top-right", choices=get_args(Position))
    t.add_argument("--subtitles", choices=get_args(SubtitleMode),
                   help="keep (default) or drop the input's subtitle tracks")  # fmt: skip
    t.add_argument("--burn-subtitles", type=_subtitle_track, metavar="N|LANG",
                   help="draw subtitle track N (0: the first) or the one tagged LANG")  # fmt: skip
    a = forms.add_parser("analyze", help="VMAF/PSNR/SSIM of DISTORTED against REFERENCE")
    a.add_argument("input", metavar="DISTORTED")
    a.add_argument("reference", metavar="REFERENCE")
    a.add_argument("--output", help="frame log (default: DISTORTED with .quality.json)")
    for metric in ("vmaf", "psnr", "ssim"):
        a.add_argument(f"--{metric}", action="store_true", help="only the metrics named")
    k = forms.add_parser("package", help="HLS/DASH ladder of INPUT into the new OUTDIR")
    k.add_argument("input")
    k.add_argument("outdir")
    k.add_argument("--hls", action="store_true")
    k.add_argument("--dash", action="store_true")
    k.add_argument("--ladder", default="720,480,360", help="heights, e.g. 1080,720 or 720:2800")
    k.add_argument("--subtitles", choices=get_args(SubtitleMode),
                   help="keep (default: WebVTT renditions) or drop text subtitles")  # fmt: skip
    k.add_argument("--audio-rendition", action="append", metavar="TRACK[:KBPS[:LAYOUT[:NAME]]]",
                   help="an alternate audio track every rung shares (repeat for more; the "
                   "first is the default): a language (eng) or an input audio track number, "
                   "e.g. eng:128, fra:96, 0:64:mono")  # fmt: skip
    k.add_argument("--hdr", choices=("auto", "tonemap"),
                   help="an HDR source: refused (auto) or tone-mapped to SDR")  # fmt: skip
    q = forms.add_parser("pertitle", help="a quality-targeted ladder of INPUT into the new OUTDIR")
    q.add_argument("input")
    q.add_argument("outdir")
    q.add_argument("--rungs", default="720,480,360", help="heights, e.g. 1080,720 or 720:3000 "
                   "(a maximum bitrate in kbps)")  # fmt: skip
    q.add_argument("--codec", default="h264", choices=PERTITLE_CODECS)
    q.add_argument("--metric", default="vmaf", choices=QUALITY_METRICS)
    q.add_argument("--target", type=float, help="quality to reach (default: VMAF 93)")
    q.add_argument("--samples", type=int, help="how many samples the CRF search encodes")
    q.add_argument("--sample-seconds", type=float, help="length of each sample")
    q.add_argument("--crf-min", type=int)
    q.add_argument("--crf-max", type=int)
    q.add_argument("--preset", default="medium")
    q.add_argument("--hls", action="store_true", help="also write an HLS package of the rungs")
    q.add_argument("--subtitles", choices=get_args(SubtitleMode),
                   help="keep (default: WebVTT renditions in the HLS package) or drop text "
                   "subtitles")  # fmt: skip
    r = forms.add_parser("probe", help="media facts of INPUT")
    r.add_argument("input")
    r.add_argument("--deep", action="store_true", help="decode every frame to count errors")
    s = forms.add_parser("thumbnail", help="a still (or --sprite sheet) of INPUT into OUTPUT")
    s.add_argument("input")
    s.add_argument("output")
    s.add_argument("--sprite", action="store_true")
    s.add_argument("--at", type=float, default=0.0, help="seconds into INPUT")
    for form in (f, t, a, k, q, r, s):
        common(form)
    return p
