"""How client commands print: aligned tables for people, one JSON document for scripts."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import msgspec

from schemas import api
from schemas.results import JobResult, LoudnessReport, ProbeInfo, StreamInfo

SHOWN_ONCE = "store this key now: it is shown only this once"


def print_json(value: object) -> None:
    """One JSON document on stdout (structs, lists and dicts of them)."""
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; None prints as `-`."""
    cells = [[("-" if c is None else str(c)) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`; None as `-`."""
    if seconds is None:
        return "-"
    s = round(max(seconds, 0.0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def ago(ts: float | None, now: float | None = None) -> str:
    """How long ago a wall-clock timestamp was, as `duration` prints it."""
    if ts is None:
        return "-"
    return duration((time.time() if now is None else now) - ts) + " ago"


def when(ts: float | None) -> str | None:
    """A wall-clock timestamp as UTC date and time; None stays None."""
    return None if ts is None else time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def print_created(created: api.KeyCreated, as_json: bool) -> None:
    """The new key on stdout (its own last line, for scripts), the rest around it."""
    if as_json:
        print_json(created)
    else:
        info = created.info
        print(
            f"{info.key_id}: {info.role} key for tenant {info.tenant}, "
            f"expires {when(info.expires_at) or 'never'}"
        )
        if created.old_key_expires_at is not None:
            print(f"{info.rotated_from}: stops working at {when(created.old_key_expires_at)}")
        print(created.key, flush=True)
    print(f"flotilla: {SHOWN_ONCE}", file=sys.stderr)


def _stream(s: StreamInfo) -> str:
    parts = [s.type, s.codec]
    if s.width and s.height:
        parts.append(f"{s.width}x{s.height}")
    if s.fps:
        parts.append(f"{s.fps:g} fps")
    if s.bit_depth and s.bit_depth != 8:
        parts.append(f"{s.bit_depth}-bit")
    if s.hdr:
        parts.append(s.hdr)
    if s.channels:
        parts.append(f"{s.channels} ch")
    if s.sample_rate:
        parts.append(f"{s.sample_rate / 1000:g} kHz")
    return " ".join(parts)


def probe_summary(p: ProbeInfo) -> str:
    """`mp4, 3.00 s, 1843 kb/s; video h264 1920x1080 30 fps; audio aac 2 ch 48 kHz`."""
    # ffprobe names a format family (`mov,mp4,m4a,3gp,3g2,mj2`): one name reads better.
    names = p.container.split(",")
    head = ["mp4" if "mp4" in names else names[0]]
    if p.duration_s is not None:
        head.append(f"{p.duration_s:.2f} s")
    if p.bitrate_bps:
        head.append(f"{p.bitrate_bps // 1000} kb/s")
    text = "; ".join([", ".join(head), *(_stream(s) for s in p.streams)])
    if p.decode_errors:
        text += f"; {p.decode_errors} decode errors"
    return text


def loudness_text(r: LoudnessReport) -> str:
    """`track 0: -56.8 -> -23.0 LUFS, true peak -52.5 -> -19.7 dBTP, LRA 0.1 -> 0.0 LU (linear)`."""

    def pair(before: float | None, after: float | None) -> str:
        return " -> ".join("silent" if v is None else f"{v:.1f}" for v in (before, after))

    text = (f"track {r.track}: {pair(r.input_i, r.output_i)} LUFS, true peak "
            f"{pair(r.input_tp, r.output_tp)} dBTP, "
            f"LRA {pair(r.input_lra, r.output_lra)} LU")  # fmt: skip
    return f"{text} ({r.mode})"


def result_rows(res: JobResult) -> list[tuple[str, str]]:
    """Every score and finding of a result, one (label, text) each, for people."""
    rows: list[tuple[str, str]] = []
    if res.vmaf is not None:
        v = res.vmaf
        rows.append(("vmaf", f"{v.mean:.2f} (min {v.min:.2f}, p5 {v.p5:.2f}, {v.model})"))
    if res.psnr is not None:
        p = res.psnr
        rows.append(("psnr", f"{p.average:.2f} dB (y {p.y:.2f}, u {p.u:.2f}, v {p.v:.2f})"))
    if res.ssim is not None:
        q = res.ssim
        rows.append(("ssim", f"{q.average:.4f} (y {q.y:.4f}, u {q.u:.4f}, v {q.v:.4f})"))
    if res.probe is not None:
        rows.append(("probe", probe_summary(res.probe)))
    rows.extend(("loudness", loudness_text(r)) for r in res.loudness)
    for r in res.renditions:
        rows.append(("rendition", f"{r.width}x{r.height} {r.codec} {r.bitrate_kbps} kb/s"))
    for a in res.audio_renditions:
        what = [f"track {a.track}", a.language or "untagged", f"{a.bitrate_kbps} kb/s"]
        what += [f"{a.channels} ch"] if a.channels else []
        what += ["default"] if a.default else []
        rows.append(("audio", f"{a.name} ({', '.join(what)})"))
    if res.dropped_rungs:
        rows.append(("dropped", ", ".join(res.dropped_rungs)))
    if res.pertitle is not None:
        t = res.pertitle
        for rung in t.rungs:
            got = "-" if rung.measured_quality is None else f"{rung.measured_quality:.2f}"
            kbps = "-" if rung.measured_kbps is None else f"{rung.measured_kbps:.0f}"
            fate = (
                "dropped (no gain over a cheaper rung)"
                if rung.dropped
                else f"{t.metric} {got}, {kbps} kb/s (fixed ladder {rung.fixed_kbps} kb/s)"
            )
            rows.append(("per-title", f"{rung.height}p crf {rung.crf:g}: {fate}"))
        if t.bits_saved_measured is not None:
            saved = t.bits_saved_measured / 8 / 1024
            rows.append(("bits saved", f"{saved:.0f} KiB against the fixed ladder"))
    if res.concat is not None:
        c = res.concat
        drift = "" if c.av_drift_ms is None else f", A/V drift {c.av_drift_ms:.0f} ms"
        gaps = max((abs(b.gap_ms) for b in c.borders), default=0.0)
        rows.append(("joined", f"{c.chunks} chunks, {c.frames} frames, {c.video_seconds:.2f} s"
                               f"{drift}, widest border gap {gaps:.1f} ms"))  # fmt: skip
    rows.extend(("note", n) for n in res.notes)
    return rows


def result_line(res: JobResult) -> str:
    """The headline of a result in one short cell: scores, else the probe."""
    parts = []
    if res.vmaf is not None:
        parts.append(f"VMAF {res.vmaf.mean:.1f}")
    if res.psnr is not None:
        parts.append(f"PSNR {res.psnr.average:.1f}")
    if res.ssim is not None:
        parts.append(f"SSIM {res.ssim.average:.3f}")
    if res.renditions:
        parts.append(f"{len(res.renditions)} renditions")
    if res.concat is not None:
        c = res.concat
        drift = "" if c.av_drift_ms is None else f", A/V drift {c.av_drift_ms:.0f} ms"
        parts.append(f"{c.chunks} chunks joined, {c.frames} frames verified{drift}")
    if res.probe is not None and not parts:
        parts.append(probe_summary(res.probe))
    return ", ".join(parts) or "-"
