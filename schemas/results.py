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
    #: The track's language tag as the container holds it (`eng`); None when untagged or `und`.
    language: str | None = None


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


class AudioRenditionReport(ReportPart, kw_only=True):
    """One alternate audio track a package wrote."""

    name: str
    #: The input audio track it was encoded from (0: the first), and its language tag.
    track: NonNegInt
    language: str | None = None
    bitrate_kbps: NonNegInt
    channels: NonNegInt | None = None
    default: bool = False


class PerTitleRungReport(ReportPart, kw_only=True):
    """One rung of a per-title ladder. `predicted_*` and `fixed_*_estimated` come from the
    sample encodes (extrapolated to the title's length); `measured_*` from the full encode."""

    height: NonNegInt
    width: NonNegInt
    #: x264/x265 CRF; the search probes it in steps of 0.5.
    crf: NonNegFloat
    #: The CRF search's probes, as [crf, quality on the samples], in the order run.
    probes: list[tuple[float, float]] = []
    #: False when no CRF within the bounds reached the target (the lowest CRF was used).
    target_reached: bool = True
    predicted_quality: float
    predicted_kbps: NonNegFloat
    #: Quality at the ladder's display size (the tallest rung the source allows), for the hull.
    display_quality: float
    #: True when the hull dropped the rung: no quality over a cheaper rung at display size.
    dropped: bool = False
    measured_quality: float | None = None
    size_bytes: NonNegInt | None = None
    measured_kbps: NonNegFloat | None = None
    #: The fixed ladder's bitrate for this height and its quality on the same samples.
    fixed_kbps: NonNegInt
    fixed_quality: float
    #: Bits the fixed rung spends over the title (its encode of the samples, extrapolated).
    fixed_bits_estimated: NonNegInt
    #: Fixed-ladder bits minus per-title bits: from the samples (estimated) and, for a kept
    #: rung, from the full encode's size (measured against the same fixed estimate).
    bits_saved_estimated: int
    bits_saved_measured: int | None = None


class PerTitleReport(ReportPart, kw_only=True):
    metric: str
    target: float
    codec: str
    #: Where the samples start (seconds), and how long each is.
    sample_starts: list[NonNegFloat] = []
    sample_seconds: NonNegFloat
    #: (width, height) every rung's quality is compared at for the hull.
    display_width: NonNegInt
    display_height: NonNegInt
    rungs: list[PerTitleRungReport] = []
    bits_saved_measured: int | None = None


class LoudnessReport(ReportPart, kw_only=True):
    """One output audio track's EBU R128 loudness: integrated (LUFS), true peak (dBTP), range
    (LU), measured on the input before normalising and on the output after. None: silence
    (no finite value)."""

    #: The audio track's place among the output's audio tracks (0 first).
    track: NonNegInt
    input_i: float | None = None
    input_tp: float | None = None
    input_lra: float | None = None
    output_i: float | None = None
    output_tp: float | None = None
    output_lra: float | None = None
    #: `linear` (one gain), `dynamic` (loudnorm's compressor and limiter: one gain would have
    #: broken the true-peak or range target), or `none` (silent: left as it was).
    mode: str = "linear"


class ChunkBorder(ReportPart, kw_only=True):
    """Where chunk `chunk` starts in the joined file, measured on its packets."""

    chunk: NonNegInt
    at_seconds: NonNegFloat
    #: Its first picture's time minus where the chunk before ends (0: seamless; negative:
    #: overlap).
    gap_ms: float
    #: The chunk's first packet is a keyframe (needed to decode from the border on).
    keyframe: bool


class ConcatReport(ReportPart, kw_only=True):
    """What a concat joined and what its verification measured on the joined file."""

    chunks: NonNegInt
    #: Video frames per chunk (packets counted), in order.
    chunk_frames: list[NonNegInt] = []
    #: Frames decoded from the joined file: equals the sum of `chunk_frames` when it passed.
    frames: NonNegInt
    #: The joined file's video duration, and the sum of the chunks' video durations.
    video_seconds: NonNegFloat
    chunks_seconds: NonNegFloat
    audio_seconds: NonNegFloat | None = None
    #: |audio end - video end| in the joined file; None without audio.
    av_drift_ms: NonNegFloat | None = None
    decode_errors: NonNegInt = 0
    borders: list[ChunkBorder] = []


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
    audio_renditions: list[AudioRenditionReport] = []
    dropped_rungs: list[str] = []
    notes: list[str] = []
    pertitle: PerTitleReport | None = None
    #: A transcode with `loudness`: one entry per output audio track.
    loudness: list[LoudnessReport] = []
    concat: ConcatReport | None = None
