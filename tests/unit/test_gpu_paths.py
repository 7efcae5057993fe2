"""GPU code paths without a GPU: pinned argv, the NVENC ladder's argv, per-device session
accounting, per-GPU verification and the session-cap probe read from recorded driver stderr."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import msgspec
import pytest

from daemon.ops.analyze import cuda_vmaf_args, cuda_vmaf_possible
from daemon.ops.devices import DeviceLedger, NoDevice, devices_of, placed
from daemon.ops.ladder_args import LadderHw, cuda_frames_possible, package_args
from daemon.ops.transcode_args import Node, transcode_args
from daemon.probe import capacity as cap
from daemon.probe.candidates import Candidate, plan
from daemon.probe.sessions import probe_session_limit, refused, session_argv, session_limit
from daemon.probe.verify import encode_argv, per_device, summarize
from schemas.codec import encode
from schemas.jobs import JobSpec
from schemas.nodes import CpuInfo, FfmpegInfo, GpuInfo, NodeCapabilities
from schemas.operations import Analyze, Package, Rung, Transcode
from schemas.registry import CAPABILITIES_DECODER
from schemas.results import StreamInfo
from tests.unit.test_nvenc_errors import SESSION_CAP_4, SESSION_CAP_7

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
GIB = 1024**3
#: An H200 (NVDEC, no NVENC engine): ffmpeg 7's words for its test encode.
NO_NVENC_ENGINE = """\
[h264_nvenc @ 0x5581e0c7a2c0] OpenEncodeSessionEx failed: unsupported device (2): (no details)
[h264_nvenc @ 0x5581e0c7a2c0] No capable devices found"""


def gpu(index: int, *, nvenc: bool = True, verified: tuple[str, ...] = (), limit: int | None = None,
        memory_gib: int = 24) -> GpuInfo:  # fmt: skip
    return GpuInfo(
        index=index, name=f"GPU {index}", uuid=f"GPU-{index}", memory_total_bytes=memory_gib * GIB,
        driver_version="550", nvenc=nvenc, nvdec=True, encoder_session_limit=limit,
        verified_encoders=list(verified),
    )  # fmt: skip


def caps(gpus: list[GpuInfo], nodes: dict[str, list[str]] | None = None) -> NodeCapabilities:
    return NodeCapabilities(
        node_id="n", hostname="n", daemon_version="0", memory_total_bytes=GIB,
        cpu=CpuInfo(model="x", physical_cores=1, logical_cores=2), disk_total_bytes=GIB,
        disk_free_bytes=GIB, ffmpeg=FfmpegInfo(path="ffmpeg", version="7.1"), gpus=gpus,
        render_node_encoders=nodes or {},
    )  # fmt: skip


# --- argv: decode and encode on the placed device -------------------------------------------


def _transcode(encoder: str, node: Node) -> list[str]:
    spec = JobSpec(job_id="j", input="file:///i.mp4", output="file:///o/x.mp4",
                   operation=Transcode(height=720))  # fmt: skip
    assert isinstance(spec.operation, Transcode)
    return transcode_args(spec.operation, encoder, Path("/i.mp4"), Path("/o/.x.partial"), node)


def test_nvenc_decode_and_encode_are_pinned_to_the_slots_gpu() -> None:
    args = _transcode("h264_nvenc", Node(threads=2, hwaccels={"cuda"}, render_node="", gpu=3))
    i = args.index("-i")
    assert args[args.index("-hwaccel") : args.index("-hwaccel") + 4] == [
        "-hwaccel", "cuda", "-hwaccel_device", "3"
    ]  # fmt: skip
    assert args.index("-hwaccel") < i < args.index("-gpu")
    assert args[args.index("-gpu") + 1] == "3"
    # No placement (no ledger): the driver's pick, as before.
    plain = _transcode("h264_nvenc", Node(threads=2, hwaccels={"cuda"}, render_node=""))
    assert "-gpu" not in plain and "-hwaccel_device" not in plain
    # Software encodes never carry a GPU.
    assert "-gpu" not in _transcode("libx264", Node(threads=2, hwaccels={"cuda"}, render_node="",
                                                    gpu=1))  # fmt: skip


def test_vaapi_and_qsv_use_the_placed_render_node() -> None:
    node = Node(threads=2, hwaccels={"vaapi"}, render_node="/dev/dri/renderD129")
    assert "vaapi=va:/dev/dri/renderD129" in _transcode("h264_vaapi", node)
    assert "qsv=hw:hw,child_device=/dev/dri/renderD129" in _transcode("h264_qsv", node)


LADDER = Package(ladder=[Rung(height=720, bitrate_kbps=3000), Rung(height=360, bitrate_kbps=800,
                 codec="hevc")])  # fmt: skip


def _ladder(hw: LadderHw | None) -> list[str]:
    rungs = list(LADDER.ladder)
    return package_args(LADDER, rungs, Path("/i.mp4"), Path("/out"), 100, True, 2,
                        size=(1920, 1080), hw=hw)  # fmt: skip


def test_an_nvenc_ladder_decodes_once_and_scales_every_rung_on_its_gpu() -> None:
    args = _ladder(LadderHw(gpu=1, cuda_frames=True))
    i = args.index("-i")
    assert args[:i][-8:-2] == ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda",
                               "-hwaccel_device", "1"]  # fmt: skip
    graph = args[args.index("-filter_complex") + 1]
    assert graph == ("[0:v:0]split=2[s0][s1];[s0]scale_cuda=1280:720:format=yuv420p[v0];"
                     "[s1]scale_cuda=640:360:format=yuv420p[v1]")  # fmt: skip
    assert args[args.index("-c:v:0") + 1] == "h264_nvenc"
    assert args[args.index("-c:v:1") + 1] == "hevc_nvenc"
    assert args[args.index("-gpu") + 1] == "1"
    assert args[args.index("-forced-idr") + 1] == "1"
    assert "-x265-params" not in args and "-sc_threshold" not in args


def test_an_nvenc_ladder_without_cuda_scaling_scales_on_the_cpu() -> None:
    assert cuda_frames_possible({"cuda"}, {"scale_cuda", "scale"})
    assert not cuda_frames_possible({"cuda"}, {"scale"})  # a build without scale_cuda
    args = _ladder(LadderHw(gpu=None, cuda_frames=False))
    assert "-hwaccel" not in args and "-gpu" not in args
    assert "scale=-2:720,format=yuv420p" in args[args.index("-filter_complex") + 1]
    assert args[args.index("-c:v:0") + 1] == "h264_nvenc"


def test_a_software_ladder_is_unchanged() -> None:
    args = _ladder(None)
    assert [args[args.index(f"-c:v:{i}") + 1] for i in (0, 1)] == ["libx264", "libx265"]
    assert "-x265-params" in args and "-hwaccel" not in args and "-gpu" not in args


# --- capacity and placement -------------------------------------------------------------------


def test_sessions_are_counted_per_gpu_from_the_probed_cap() -> None:
    h200 = gpu(0, nvenc=False, memory_gib=141)
    l4 = gpu(1, verified=("h264_nvenc", "hevc_nvenc", "av1_nvenc"), memory_gib=24)
    geforce = gpu(2, verified=("h264_nvenc", "hevc_nvenc"), limit=3, memory_gib=8)
    untested_twin = gpu(3, memory_gib=24)  # NVML says NVENC, but no test passed on it
    gpus = [h200, l4, geforce, untested_twin]
    assert [cap.gpu_slots(g, 1024, tested=True) for g in gpus] == [0, 8, 3, 0]
    assert cap.nvenc_slots(gpus, 1024) == 11
    assert cap.gpu_slots(geforce, 4096, tested=True) == 2  # memory bounds it below the cap
    # Without per-GPU tests (verify_hw_encoders off), NVML's word stands.
    assert cap.nvenc_slots([gpu(0), gpu(1, limit=5)], 1024) == 13


def test_a_ladder_takes_a_session_per_rung_on_one_gpu() -> None:
    gpus = [gpu(0, nvenc=False), gpu(1, verified=("h264_nvenc", "hevc_nvenc"), limit=3),
            gpu(2, verified=("h264_nvenc", "av1_nvenc"), limit=4)]  # fmt: skip
    devices = devices_of(caps(gpus), 1024)
    assert [(d.index, d.sessions) for d in devices] == [(1, 3), (2, 4)]
    ledger = DeviceLedger(devices)
    both = {"h264_nvenc", "hevc_nvenc"}
    first = ledger.place("nvenc", both, 3)  # only GPU 1 verified HEVC
    assert first is not None and first.gpu == 1
    assert ledger.place("nvenc", both, 1) is None  # GPU 1 is full, GPU 2 has no HEVC
    av1 = ledger.place("nvenc", {"av1_nvenc"}, 1)
    assert av1 is not None and av1.gpu == 2
    h264 = ledger.place("nvenc", {"h264_nvenc"}, 2)  # the most free: GPU 2 (3 left)
    assert h264 is not None and h264.gpu == 2
    assert ledger.free(devices[1]) == 1
    ledger.release(first)
    assert ledger.free(devices[0]) == 3
    with pytest.raises(RuntimeError):
        ledger.release(first)


def test_placed_raises_no_device_when_busy_and_frees_on_exit() -> None:
    ledger = DeviceLedger(devices_of(caps([gpu(0, verified=("h264_nvenc",), limit=2)]), 1024))
    with placed(ledger, "nvenc", {"h264_nvenc"}, 2) as p:
        assert p is not None and p.gpu == 0
        busy = pytest.raises(NoDevice, match="no nvenc device has 1 free session")
        with busy, placed(ledger, "nvenc", {"h264_nvenc"}):
            pass
    with placed(ledger, "nvenc", {"h264_nvenc"}, 2) as again:
        assert again is not None
    with placed(ledger, "software", set()) as soft, placed(None, "nvenc", {"h264_nvenc"}) as free:
        assert soft is None and free is None
    # VAAPI accepted untested (no render node in the ledger): the default device, not refused.
    with placed(ledger, "vaapi", {"h264_vaapi"}) as default:
        assert default is None


def test_render_nodes_are_devices_of_their_verified_families() -> None:
    nodes = {"/dev/dri/renderD129": ["h264_vaapi", "h264_qsv"], "/dev/dri/renderD128": []}
    devices = devices_of(caps([], nodes), 1024)
    assert [(d.family, d.path) for d in devices] == [
        ("qsv", "/dev/dri/renderD129"), ("vaapi", "/dev/dri/renderD129")
    ]  # fmt: skip
    placement = DeviceLedger(devices).place("vaapi", {"h264_vaapi"}, 1)
    assert placement is not None and placement.device.path == "/dev/dri/renderD129"
    assert placement.gpu is None


# --- per-GPU verification and the session-cap probe -------------------------------------------


def test_nvenc_is_tested_on_every_gpu_pinned_with_dash_gpu() -> None:
    todo = plan(["libx264", "h264_nvenc"], [gpu(0, nvenc=False), gpu(1)], [])
    assert [(c.name, c.gpu) for c in todo.test] == [("libx264", None), ("h264_nvenc", 0),
                                                     ("h264_nvenc", 1)]  # fmt: skip
    argv = encode_argv("ffmpeg", todo.test[2])
    assert argv[argv.index("-c:v") + 1 :][:3] == ["h264_nvenc", "-gpu", "1"]


def test_an_encoder_passes_where_any_gpu_passed_and_each_gpu_keeps_its_own() -> None:
    on = [Candidate("h264_nvenc", "nvenc", gpu=0), Candidate("h264_nvenc", "nvenc", gpu=1),
          Candidate("av1_nvenc", "nvenc", gpu=0), Candidate("av1_nvenc", "nvenc", gpu=1),
          Candidate("h264_vaapi", "vaapi", "/dev/dri/renderD129")]  # fmt: skip
    outcomes = [(on[0], "No capable devices found"), (on[1], None),
                (on[2], "No capable devices found"), (on[3], "unsupported device (2)"),
                (on[4], None)]  # fmt: skip
    verified, dropped = summarize(outcomes)
    assert verified == ["h264_nvenc", "h264_vaapi"]
    assert [(d.name, d.reason) for d in dropped] == [
        ("av1_nvenc", "GPU 0: No capable devices found; GPU 1: unsupported device (2)")
    ]
    assert per_device(outcomes) == ({1: ["h264_nvenc"]}, {"/dev/dri/renderD129": ["h264_vaapi"]})


def test_the_session_cap_is_read_from_recorded_driver_refusals() -> None:
    assert refused(SESSION_CAP_7) and refused(SESSION_CAP_4)
    assert not refused(NO_NVENC_ENGINE)
    three = [(True, "")] * 3 + [(False, SESSION_CAP_7)] * 2
    assert session_limit(three) == (3, "driver refused session 4 of 5 opened at once")
    assert session_limit([(True, "")] * 12)[0] == 12  # no cap seen: what was proved
    # An H200: no NVENC engine at all says nothing about a cap.
    assert session_limit([(False, NO_NVENC_ENGINE)] * 4)[0] is None
    assert session_limit([(False, SESSION_CAP_4)] * 2)[0] is None  # all taken by others
    argv = session_argv("ffmpeg", 2)
    assert argv[argv.index("-gpu") + 1] == "2" and "-re" in argv


async def test_the_session_probe_runs_real_ffmpeg_and_finds_no_cap_without_nvenc() -> None:
    limit, note = await probe_session_limit(FFMPEG, 0, 2, within=20)
    assert limit is None and "failed for another reason" in note
    assert (await probe_session_limit(FFMPEG, 0, 0)) == (None, "session probe off")


def test_a_record_from_an_older_node_reads_without_per_device_fields() -> None:
    doc = msgspec.json.decode(encode(caps([gpu(0, verified=("h264_nvenc",), limit=3)])))
    del doc["render_node_encoders"]
    del doc["gpus"][0]["verified_encoders"]
    old = CAPABILITIES_DECODER.decode(msgspec.json.encode(doc))
    assert old.render_node_encoders == {} and old.gpus[0].verified_encoders == []
    # Without per-GPU results, NVML's NVENC flag decides, as before.
    assert [d.index for d in devices_of(old, 1024)] == [0]


# --- analyze: libvmaf_cuda where the build has it ---------------------------------------------

GPU_BUILD = {"libvmaf_cuda", "scale_cuda", "hwdownload", "libvmaf", "scale"}


def test_vmaf_runs_on_the_gpu_only_where_the_build_and_the_job_allow() -> None:
    vmaf = Analyze(reference="file:///r.mp4", vmaf=True)
    both = Analyze(reference="file:///r.mp4", vmaf=True, psnr=True)
    ref8, ref10 = (
        StreamInfo(index=0, type="video", codec="h264", width=1920, height=1080),
        StreamInfo(index=0, type="video", codec="h264", width=1920, height=1080, bit_depth=10),
    )
    assert cuda_vmaf_possible(vmaf, ref8, {"cuda"}, GPU_BUILD)
    assert not cuda_vmaf_possible(vmaf, ref8, {"cuda"}, {"libvmaf", "scale_cuda"})  # no cuda vmaf
    assert not cuda_vmaf_possible(vmaf, ref8, set(), GPU_BUILD)  # no cuda hwaccel
    assert cuda_vmaf_possible(both, ref8, {"cuda"}, GPU_BUILD)
    assert not cuda_vmaf_possible(Analyze(reference="file:///r.mp4", vmaf=False), ref8, {"cuda"},
                                  GPU_BUILD)  # fmt: skip
    assert not cuda_vmaf_possible(vmaf, ref10, {"cuda"}, GPU_BUILD)


def test_the_cuda_vmaf_graph_decodes_both_inputs_on_the_gpu() -> None:
    op = Analyze(reference="file:///r.mp4", vmaf=True, psnr=False, ssim=False, subsample=2)
    d = StreamInfo(index=0, type="video", codec="h264", width=1280, height=720)
    r = StreamInfo(index=0, type="video", codec="h264", width=1920, height=1080)
    guard = ("-protocol_whitelist", "file")
    args = cuda_vmaf_args(op, d, r, "vmaf_v0.6.1", Path("/s/vmaf.json"), guard,
                          ("file:/d.mp4", "file:/r.mp4", list(guard)))  # fmt: skip
    hw = ["-hwaccel", "cuda", "-hwaccel_output_format", "cuda"]
    assert args[:4] == hw and args[args.index("file:/d.mp4") + 1 :][:4] == hw
    graph = args[args.index("-filter_complex") + 1]
    assert "[0:v:0]setpts=PTS-STARTPTS,scale_cuda=1920:1080:format=yuv420p[dv]" in graph
    assert graph.endswith("libvmaf_cuda=model=version=vmaf_v0.6.1:log_fmt=json:"
                          "log_path=/s/vmaf.json:n_subsample=2[out]")  # fmt: skip


def test_psnr_and_ssim_beside_cuda_vmaf_get_downloaded_copies() -> None:
    op = Analyze(reference="file:///r.mp4")  # all three metrics
    v = StreamInfo(index=0, type="video", codec="h264", width=640, height=360)
    args = cuda_vmaf_args(op, v, v, "vmaf_v0.6.1", Path("/s/v.json"), (), ("d", "r", []))
    graph = args[args.index("-filter_complex") + 1].split(";")
    assert graph[0].endswith("format=yuv420p,split=2[dv][dc]")
    assert graph[2].endswith("[vm]") and graph[3] == "[vm]nullsink"
    assert graph[4:] == ["[dc]hwdownload,format=yuv420p[d0]",
                         "[rc]hwdownload,format=yuv420p,split=2[r0][r1]",
                         "[d0][r0]psnr[d1]", "[d1][r1]ssim[out]"]  # fmt: skip
