"""ffmpeg's -progress blocks parsed, percent from the duration, throttled; stderr classified."""

from __future__ import annotations

import pytest

from daemon.errors import EncoderError, InputError, InvalidJob, JobError, ResourceExhausted
from daemon.ffmpeg.progress import ProgressParser, ProgressUpdate, Throttle
from daemon.ffmpeg.stderr import StderrTail, classify

BLOCK = """frame=50
fps=24.50
stream_0_0_q=-0.0
bitrate=N/A
total_size=N/A
out_time_us=1000000
out_time_ms=1000000
out_time=00:00:01.000000
dup_frames=0
drop_frames=0
speed= 125x
progress=continue
"""


def feed(parser: ProgressParser, text: str) -> list[ProgressUpdate]:
    return [u for line in text.splitlines() if (u := parser.feed(line)) is not None]


def test_a_block_becomes_one_update() -> None:
    [update] = feed(ProgressParser(duration_s=4.0), BLOCK)
    assert update == ProgressUpdate(
        frame=50, fps=24.5, out_time_s=1.0, speed=125.0, percent=25.0, ended=False
    )


def test_end_block_and_unknowns() -> None:
    text = "frame=0\nfps=N/A\nout_time_us=N/A\nout_time=-577014:32:22.775808\nspeed=N/A\n"
    text += "progress=end\n"
    [update] = feed(ProgressParser(duration_s=None), text)
    assert update == ProgressUpdate(frame=0, ended=True)


def test_out_time_fallbacks_and_clamping() -> None:
    parser = ProgressParser(duration_s=2.0)
    [a, b] = feed(
        parser, "out_time_ms=3000000\nprogress=continue\nout_time=00:00:01.5\nprogress=x\n"
    )
    assert (a.out_time_s, a.percent) == (3.0, 100.0)  # out_time_ms is microseconds, clamped
    assert (b.out_time_s, b.percent) == (1.5, 75.0)


def test_span_places_a_pass_on_the_job_scale() -> None:
    second_pass = ProgressParser(duration_s=10.0, span=(50.0, 100.0))
    [update] = feed(second_pass, "out_time_us=5000000\nprogress=continue\n")
    assert update.percent == 75.0


def test_a_duration_learnt_during_the_run_is_used_from_then_on() -> None:
    learnt: list[float] = []
    parser = ProgressParser(duration_s=lambda: learnt[0] if learnt else None)
    [before] = feed(parser, "out_time_us=1000000\nprogress=continue\n")
    learnt.append(4.0)
    [after] = feed(parser, "out_time_us=2000000\nprogress=continue\n")
    assert (before.percent, after.percent) == (None, 50.0)


def test_garbage_lines_are_ignored() -> None:
    parser = ProgressParser(duration_s=1.0)
    assert feed(parser, "nonsense\nfps=nan\nspeed=-3x\nframe=-1\nprogress=continue\n") == [
        ProgressUpdate()
    ]


def test_throttle_lets_one_through_per_interval_and_keeps_the_last() -> None:
    now = [0.0]
    throttle: Throttle[int] = Throttle(1.0, clock=lambda: now[0])
    passed = []
    for i in range(10):
        now[0] = i * 0.3
        if (item := throttle.offer(i)) is not None:
            passed.append(item)
    assert passed == [0, 4, 8]
    assert throttle.flush() == 9
    assert throttle.flush() is None


def tail_of(*lines: str) -> StderrTail:
    tail = StderrTail(max_lines=5, max_bytes=200)
    for line in lines:
        tail.add(line)
    return tail


NO_FILE = "[in#0 @ 0x5] [error] Error opening input: No such file or directory"
WHITELIST = "[http @ 0x1] [error] Protocol 'http' not on whitelist 'file'!"
NO_CUDA = "[h264_nvenc @ 0x5] [error] Cannot load libcuda.so.1"
NO_NVENC = "[h264_nvenc @ 0x5] [error] OpenEncodeSessionEx failed: unsupported device (2)"
NO_VA = "[AVHWDeviceContext @ 0x1] [error] No such file or directory"
DISK_FULL = "[out#0/mp4 @ 0x1] [error] Could not write header: No space left on device"
NO_TAG = "[mp4 @ 0x1] [error] Could not find tag for codec pcm_s16le in stream #1"
CASES: list[tuple[list[str], str | None, type[JobError], str]] = [
    ([NO_FILE], None, InputError, "No such file"),
    ([WHITELIST], None, InputError, "whitelist"),
    ([NO_CUDA, "[error] Conversion failed!"], "h264_nvenc", EncoderError, "libcuda"),
    ([NO_NVENC], "h264_nvenc", EncoderError, "unsupported device"),
    # Once the input opened, a missing device is the encoder's fault, not the input's.
    ([NO_VA, "[error] Device creation failed: -2."], "h264_vaapi", EncoderError, "Device"),
    ([DISK_FULL], None, ResourceExhausted, "No space"),
    ([NO_TAG], None, InvalidJob, "Could not find tag"),
    (["[fatal] something odd happened"], None, JobError, "something odd"),
    ([], None, JobError, "exited with code 1"),
]


@pytest.mark.parametrize(("lines", "encoder", "cls", "needle"), CASES)
def test_classify_by_stderr(
    lines: list[str], encoder: str | None, cls: type[JobError], needle: str
) -> None:
    error = classify(1, tail_of(*lines), encoder=encoder)
    assert type(error) is cls
    assert needle in error.reason and " @ 0x" not in error.reason
    assert error.exit_code == 1
    if isinstance(error, EncoderError):
        assert error.encoder == encoder


def test_killed_by_a_signal_is_transient() -> None:
    error = classify(-11, tail_of("[info] frame=1"), encoder="libx264")
    assert type(error) is JobError and error.kind == "transient"
    assert "SIGSEGV" in error.reason


#: A static ffmpeg's QSV device open on a host without libva-drm, as recorded: it aborts.
NO_VA_DRM = [
    "implib-gen: libva-drm.so.2: failed to load library 'libva-drm.so.2' via dlopen: "
    "libva-drm.so.2: cannot open shared object file: No such file or directory",
    'ffmpeg: libva-drm.so.2.init.c:122: load_library: Assertion `0 && "Assertion in generated '
    "code\"' failed.",
]


def test_a_hardware_driver_library_that_will_not_load_is_the_encoders_fault() -> None:
    """The next encoder in the chain gets the job and encoder health counts the failure, where
    a plain job error (and SIGABRT's "killed by") would fail the attempt."""
    error = classify(-6, tail_of(*NO_VA_DRM), encoder="h264_qsv")
    assert type(error) is EncoderError and error.encoder == "h264_qsv"
    assert "libva-drm.so.2" in error.reason and "SIGABRT" in error.reason
    assert error.exit_code == -6


def test_a_library_line_under_a_software_encoder_stays_a_job_error() -> None:
    assert type(classify(-6, tail_of(*NO_VA_DRM), encoder="libx264")) is JobError
    assert type(classify(-6, tail_of(*NO_VA_DRM), encoder=None)) is JobError


def test_tail_is_bounded_but_keeps_the_first_errors() -> None:
    tail = tail_of("[error] first cause", *[f"[info] chatter {i}" for i in range(50)])
    assert len(tail.lines) == 5 and len(tail.text()) <= 200
    assert tail.first_errors == ["[error] first cause"]
    assert "first cause" in classify(1, tail, encoder=None).reason
