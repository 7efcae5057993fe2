"""Result metrics carried by `completed` events, one optional section per operation."""

from __future__ import annotations

from schemas.common import NonNegFloat, NonNegInt, ReportPart, Sha256


class OutputFile(ReportPart, kw_only=True):
    uri: str
    size_bytes: NonNegInt
    sha256: Sha256
    role: str = "main"


class VmafScores(ReportPart, kw_only=True):
    mean: float
    min: float
    harmonic_mean: float
    p1: float
    p5: float
    p50: float
    model: str


class PlaneScores(ReportPart, kw_only=True):
    y: float
    u: float
    v: float
    average: float


class StreamInfo(ReportPart, kw_only=True):
    index: NonNegInt
    type: str
    codec: str
    width: NonNegInt | None = None
    height: NonNegInt | None = None
    fps: NonNegFloat | None = None
    pix_fmt: str | None = None
    bit_depth: NonNegInt | None = None
    hdr: str | None = None
    channels: NonNegInt | None = None
    sample_rate: NonNegInt | None = None
    bitrate_bps: NonNegInt | None = None
    duration_s: NonNegFloat | None = None


class ProbeInfo(ReportPart, kw_only=True):
    container: str
    duration_s: NonNegFloat | None
    size_bytes: NonNegInt | None = None
    bitrate_bps: NonNegInt | None = None
    streams: list[StreamInfo] = []
    decode_errors: NonNegInt | None = None
    decode_error_lines: list[str] = []


class Rendition(ReportPart, kw_only=True):
    height: NonNegInt
    width: NonNegInt
    bitrate_kbps: NonNegInt
    codec: str


class JobResult(ReportPart, kw_only=True):
    wall_seconds: NonNegFloat = 0.0
    media_seconds: NonNegFloat | None = None
    realtime_factor: NonNegFloat | None = None
    encoder: str | None = None
    input_size_bytes: NonNegInt | None = None
    outputs: list[OutputFile] = []
    vmaf: VmafScores | None = None
    psnr: PlaneScores | None = None
    ssim: PlaneScores | None = None
    probe: ProbeInfo | None = None
    renditions: list[Rendition] = []
    dropped_rungs: list[str] = []
    notes: list[str] = []
