"""Hardware encoder failures recorded from real NVENC runs, classified without a GPU.

The session cap of a GeForce card (3 to 8 concurrent NVENC sessions) surfaces as "out of
memory (10)" from OpenEncodeSessionEx; it is the encoder's, not the host's: the attempt falls
back to the next encoder (or hands the job back for another node) and encoder health counts
it, where `resource` would do neither.
"""

from __future__ import annotations

import pytest

from daemon.errors import EncoderError, JobError, ResourceExhausted
from daemon.ffmpeg.stderr import StderrTail, classify
from daemon.job.retry import Nak, decide

#: ffmpeg 7 with `-loglevel level+info`, one encode past the session cap.
SESSION_CAP_7 = """\
[h264_nvenc @ 0x55d0c1c3e2c0] [error] OpenEncodeSessionEx failed: out of memory (10): (no details)
[h264_nvenc @ 0x55d0c1c3e2c0] [error] No capable devices found
[vost#0:0/h264_nvenc @ 0x55d0c1c3d6c0] [error] Error while opening encoder - maybe incorrect \
parameters such as bit_rate, rate, width or height.
[vf#0:0 @ 0x55d0c1c3e000] [error] Error sending frames to consumers: Cannot allocate memory
[vf#0:0 @ 0x55d0c1c3e000] [error] Task finished with error code: -12 (Cannot allocate memory)
[vost#0:0/h264_nvenc @ 0x55d0c1c3d6c0] [error] Could not open encoder before EOF
[out#0/mp4 @ 0x55d0c1c3cb80] [error] Nothing was written into output file, because at least \
one of its streams received no packets.
[fatal] Conversion failed!"""
#: ffmpeg 4, the same cap (its wording before the 5.0 CLI rewrite).
SESSION_CAP_4 = """\
[hevc_nvenc @ 0x5601aa5b40c0] [error] OpenEncodeSessionEx failed: out of memory (10)
[hevc_nvenc @ 0x5601aa5b40c0] [error] No NVENC capable devices found
[error] Error initializing output stream 0:0 -- Error while opening encoder for output stream \
#0:0 - maybe incorrect parameters such as bit_rate, rate, width or height"""
#: The GPU's memory, not the session cap: CUDA context creation inside the encoder.
CUDA_OOM = """\
[h264_nvenc @ 0x561355b9bcc0] [error] dl_fn->cuda_dl->cuCtxCreate(&ctx->cu_context_internal, 0, \
cu_device) failed -> CUDA_ERROR_OUT_OF_MEMORY: out of memory
[h264_nvenc @ 0x561355b9bcc0] [error] No NVENC capable devices found"""
#: Too many surfaces for what is left of the GPU's memory.
BITSTREAM_OOM = "[h264_nvenc @ 0x55e1] [error] CreateBitstreamBuffer failed: out of memory (10)"


def _tail(text: str) -> StderrTail:
    tail = StderrTail()
    for line in text.splitlines():
        tail.add(line)
    return tail


@pytest.mark.parametrize(
    ("stderr", "encoder", "needle"),
    [
        (SESSION_CAP_7, "h264_nvenc", "OpenEncodeSessionEx failed: out of memory (10)"),
        (SESSION_CAP_4, "hevc_nvenc", "OpenEncodeSessionEx failed: out of memory (10)"),
        (CUDA_OOM, "h264_nvenc", "CUDA_ERROR_OUT_OF_MEMORY"),
        (BITSTREAM_OOM, "h264_nvenc", "CreateBitstreamBuffer failed"),
    ],
)
def test_nvenc_session_and_memory_failures_are_encoder_errors(
    stderr: str, encoder: str, needle: str
) -> None:
    error = classify(1, _tail(stderr), encoder=encoder)
    assert type(error) is EncoderError and error.encoder == encoder
    assert needle in error.reason and " @ 0x" not in error.reason
    # Transient: the job goes back for another attempt (on any node) when no fallback is left.
    assert error.kind == "transient"
    assert isinstance(decide(error.kind, 1, 3, 1.0, 60.0), Nak)


def test_the_host_out_of_memory_stays_a_resource_error() -> None:
    # A software encoder out of memory, or a muxer with a full disk, is the node's state.
    x264 = "[libx264 @ 0x1] [error] malloc of size 12345 failed: Cannot allocate memory"
    assert type(classify(1, _tail(x264), encoder="libx264")) is ResourceExhausted
    disk = "[out#0/mp4 @ 0x1] [error] Error writing trailer: No space left on device"
    assert type(classify(1, _tail(disk), encoder="h264_nvenc")) is ResourceExhausted
    # Not knowing the encoder (a probe, a copy): nothing to fall back from.
    error = classify(1, _tail(SESSION_CAP_7), encoder=None)
    assert isinstance(error, JobError) and not isinstance(error, EncoderError)
