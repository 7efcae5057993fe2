"""What `flotilla status` and the demo print of a result: every score and the probe's findings,
not only VMAF (a probe or a PSNR-only analyze used to print nothing but `0Ki`)."""

from __future__ import annotations

import msgspec

from control.cli.format import probe_summary, result_line, result_rows
from schemas.results import (
    ChunkBorder,
    ConcatReport,
    JobResult,
    PerTitleReport,
    PerTitleRungReport,
    PlaneScores,
    ProbeInfo,
    Rendition,
    StreamInfo,
    VmafScores,
)

PROBE = ProbeInfo(
    container="mov,mp4,m4a,3gp,3g2,mj2",
    duration_s=3.0,
    bitrate_bps=1_843_000,
    streams=[
        StreamInfo(index=0, type="video", codec="h264", width=1920, height=1080, fps=30.0),
        StreamInfo(index=1, type="audio", codec="aac", channels=2, sample_rate=48000),
    ],
)


def test_probe_summary_names_container_duration_and_each_stream() -> None:
    assert probe_summary(PROBE) == (
        "mp4, 3.00 s, 1843 kb/s; video h264 1920x1080 30 fps; audio aac 2 ch 48 kHz"
    )


def test_probe_summary_shows_depth_hdr_and_decode_errors() -> None:
    hdr = StreamInfo(index=0, type="video", codec="hevc", bit_depth=10, hdr="hdr10")
    info = ProbeInfo(container="matroska,webm", duration_s=None, streams=[hdr], decode_errors=2)
    assert probe_summary(info) == "matroska; video hevc 10-bit hdr10; 2 decode errors"


def test_rows_carry_every_score_and_the_notes() -> None:
    res = JobResult(
        vmaf=VmafScores(
            mean=93.5, min=80.1, harmonic_mean=93.0, p1=81, p5=85.2, p50=94, model="vmaf_v0.6.1"
        ),
        psnr=PlaneScores(y=41.2, u=44.0, v=45.1, average=42.0),
        ssim=PlaneScores(y=0.981, u=0.99, v=0.991, average=0.985),
        notes=["psnr of identical frames is infinite"],
    )
    rows = dict(result_rows(res))
    assert rows["vmaf"].startswith("93.50 (min 80.10, p5 85.20")
    assert rows["psnr"].startswith("42.00 dB")
    assert rows["ssim"].startswith("0.9850")
    assert rows["note"] == "psnr of identical frames is infinite"
    assert result_line(res) == "VMAF 93.5, PSNR 42.0, SSIM 0.985"


def test_a_probe_result_headlines_its_findings_and_an_empty_one_a_dash() -> None:
    assert result_line(JobResult(probe=PROBE)).startswith("mp4, 3.00 s")
    assert result_line(JobResult()) == "-"
    ladder = [
        Rendition(height=h, width=h * 16 // 9, bitrate_kbps=h, codec="h264") for h in (720, 360)
    ]
    assert result_line(JobResult(renditions=ladder)) == "2 renditions"
    assert result_rows(JobResult()) == []


def test_a_per_title_result_lists_each_rung_and_the_saving() -> None:
    kept = PerTitleRungReport(
        height=720, width=1280, crf=24.5, predicted_quality=93.2, predicted_kbps=900,
        display_quality=93.2, measured_quality=93.59, measured_kbps=880.4, fixed_kbps=2500,
        fixed_quality=96, fixed_bits_estimated=7_500_000, bits_saved_estimated=4_800_000,
    )  # fmt: skip
    gone = msgspec.structs.replace(kept, height=360, width=640, dropped=True)
    report = PerTitleReport(
        metric="vmaf", target=93, codec="h264", sample_seconds=1, display_width=1280,
        display_height=720, rungs=[kept, gone], bits_saved_measured=8 * 1024 * 782,
    )  # fmt: skip
    rows = result_rows(JobResult(pertitle=report))
    assert rows == [
        ("per-title", "720p crf 24.5: vmaf 93.59, 880 kb/s (fixed ladder 2500 kb/s)"),
        ("per-title", "360p crf 24.5: dropped (no gain over a cheaper rung)"),
        ("bits saved", "782 KiB against the fixed ladder"),
    ]


def test_a_join_reports_its_chunks_frames_and_seams() -> None:
    borders = [ChunkBorder(chunk=1, at_seconds=2.5, gap_ms=-0.4, keyframe=True)]
    join = ConcatReport(chunks=2, chunk_frames=[63, 62], frames=125, video_seconds=5.0,
                        chunks_seconds=5.0, av_drift_ms=12.3, borders=borders)  # fmt: skip
    assert dict(result_rows(JobResult(concat=join)))["joined"] == (
        "2 chunks, 125 frames, 5.00 s, A/V drift 12 ms, widest border gap 0.4 ms"
    )
    assert result_line(JobResult(concat=join)) == (
        "2 chunks joined, 125 frames verified, A/V drift 12 ms"
    )
