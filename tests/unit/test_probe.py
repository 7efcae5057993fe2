"""The node probe against the real ffmpeg build: verify before advertising, capacity, parsing."""

from __future__ import annotations

import sys
from pathlib import Path

import imageio_ffmpeg
import msgspec
import pytest
import pytest_asyncio

from daemon.config import DaemonConfig
from daemon.probe import Candidate, Nvml, ProbeError, plan, probe_ffmpeg, probe_node, reverify
from daemon.probe import capacity as cap
from daemon.probe.candidates import NO_NVENC_GPU, NOT_IN_BUILD, family_of
from daemon.probe.dri import RenderNode, render_nodes
from daemon.probe.ffmpeg_caps import parse_encoders, parse_filters, parse_hwaccels, parse_version
from daemon.probe.host import cpu_model, disk_usage, nearest_existing
from daemon.probe.node import capabilities_changed
from daemon.probe.run import run_capture
from daemon.probe.verify import failure_reason, verify_encoders
from schemas.codec import encode
from schemas.nodes import CpuInfo, FfmpegInfo, GpuInfo, NodeCapabilities
from schemas.registry import CAPABILITIES_DECODER

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
HW_SUFFIXES = ("_nvenc", "_qsv", "_vaapi")
GIB = 1024**3


def gpu(
    nvenc: bool, memory_gib: int = 16, limit: int | None = None, codecs: tuple[str, ...] = ()
) -> GpuInfo:
    return GpuInfo(
        index=0,
        name="test GPU",
        uuid="GPU-0",
        memory_total_bytes=memory_gib * GIB,
        driver_version="0",
        nvenc=nvenc,
        nvdec=True,
        encoder_session_limit=limit,
        encoder_codecs=list(codecs),
    )


@pytest_asyncio.fixture(scope="module")
async def caps(tmp_path_factory: pytest.TempPathFactory) -> NodeCapabilities:
    state = tmp_path_factory.mktemp("state")
    cfg = DaemonConfig(node_id="probe-test", state_dir=str(state), labels={"rack": "r1"})
    return await probe_node(cfg, FFMPEG, "0.0.test")


# --- the whole probe on this machine (no NVIDIA driver, no /dev/dri) -------------------------


async def test_no_gpus_and_no_hardware_encoder_advertised(caps: NodeCapabilities) -> None:
    assert caps.gpus == []
    assert any(note.startswith("NVML unavailable: ") for note in caps.gpu_notes)
    assert not [n for n in caps.verified_encoders if n.endswith(HW_SUFFIXES)]
    dropped = {d.name: d.reason for d in caps.dropped_encoders}
    offered_hw = [n for n in caps.ffmpeg.encoders if family_of(n) in ("nvenc", "qsv", "vaapi")]
    assert "h264_nvenc" in offered_hw  # the wheel's build lists NVENC...
    assert dropped["h264_nvenc"] == NO_NVENC_GPU  # ...and the probe refuses to claim it
    for name in offered_hw:
        assert dropped[name], name


async def test_software_verified_and_cpu_pool_sized(caps: NodeCapabilities) -> None:
    assert {"libx264", "libx265", "libvpx-vp9", "aac", "libopus"} <= set(caps.verified_encoders)
    assert caps.pools == ["cpu"]
    assert caps.slots == {"cpu": cap.cpu_slots(caps.cpu.logical_cores, 2)}
    assert caps.cpu.logical_cores >= caps.cpu.physical_cores >= 1 and caps.cpu.model
    assert caps.memory_total_bytes > 0 and caps.disk_total_bytes >= caps.disk_free_bytes > 0
    assert caps.ffmpeg.path == FFMPEG and caps.ffmpeg.version != "unknown"
    assert "scale" in caps.ffmpeg.filters and "vaapi" in caps.hwaccels
    assert caps.labels == {"rack": "r1"}


async def test_capabilities_round_trip_through_json(caps: NodeCapabilities) -> None:
    assert CAPABILITIES_DECODER.decode(encode(caps)) == caps


async def test_nvml_session_without_a_driver_is_quietly_empty() -> None:
    nvml = await Nvml.open()
    assert not nvml.available
    assert await nvml.loads() == [] and nvml.last_loads() == []
    gpus, notes = await nvml.probe()
    assert gpus == [] and notes[0].startswith("NVML unavailable: ")
    await nvml.close()
    await nvml.close()  # idempotent


# --- verification with the real ffmpeg -------------------------------------------------------


async def test_gpu_without_nvenc_is_tried_and_dropped_with_ffmpegs_reason() -> None:
    # The H200 case: NVML shows a GPU but no NVENC engine. h264_nvenc is still tried, so the
    # drop carries ffmpeg's own words (here: no CUDA driver at all).
    todo = plan(["libx264", "h264_nvenc"], [gpu(nvenc=False)], [])
    assert [c.name for c in todo.test] == ["libx264", "h264_nvenc"]
    verified, dropped = await verify_encoders(FFMPEG, todo.test)
    assert verified == ["libx264"]
    assert [d.name for d in dropped] == ["h264_nvenc"]
    assert dropped[0].reason and "maybe incorrect parameters" not in dropped[0].reason


async def test_bogus_encoder_is_dropped_with_a_reason() -> None:
    verified, dropped = await verify_encoders(FFMPEG, [Candidate("no_such_enc", "software")])
    assert verified == []
    assert "Unknown encoder 'no_such_enc'" in dropped[0].reason


async def test_render_node_is_found_and_its_vaapi_test_fails_here(tmp_path: Path) -> None:
    dev, sys_drm = tmp_path / "dri", tmp_path / "drm"
    dev.mkdir()
    # A dangling link: listed like a node, but no VA display opens on it (no GPU here).
    (dev / "renderD128").symlink_to(tmp_path / "gone")
    (dev / "card0").touch()
    (sys_drm / "renderD128" / "device").mkdir(parents=True)
    (sys_drm / "renderD128" / "device" / "driver").symlink_to("../../bus/pci/drivers/i915")
    nodes = await render_nodes(dev, sys_drm)
    assert nodes == [RenderNode(str(dev / "renderD128"), "i915")]
    todo = plan(["h264_vaapi", "hevc_qsv", "h264_nvenc"], [], nodes)
    assert {c.name: c.device for c in todo.test} == {
        "h264_vaapi": str(dev / "renderD128"),
        "hevc_qsv": str(dev / "renderD128"),
    }
    verified, dropped = await verify_encoders(FFMPEG, todo.test)
    assert verified == []
    assert [d.reason for d in dropped] == [f"No VA display found for device {nodes[0].path}."] * 2


async def test_reverify_one_encoder() -> None:
    assert await reverify(FFMPEG, "libx264", [], []) is None
    assert await reverify(FFMPEG, "h264_nvenc", [], []) == NO_NVENC_GPU
    assert await reverify(FFMPEG, "h264_vaapi", [], []) == "no render node"


async def test_missing_ffmpeg_is_a_probe_error(tmp_path: Path) -> None:
    with pytest.raises(ProbeError):
        await probe_ffmpeg(str(tmp_path / "ffmpeg"))
    info = await probe_ffmpeg(FFMPEG)
    assert "libx264" in info.encoders and len(info.encoders) == len(set(info.encoders))


async def test_run_capture_kills_at_the_deadline_and_reports_a_missing_program() -> None:
    slow = await run_capture([sys.executable, "-c", "import time; time.sleep(60)"], 0.2)
    assert slow.timed_out and slow.returncode is None
    missing = await run_capture(["/nonexistent/ffmpeg"], 5)
    assert missing.returncode is None and missing.stderr.startswith("cannot run")


# --- pure parts: parsing, plans, capacity -----------------------------------------------------

ENCODERS = """Encoders:
 V..... = Video
 A..... = Audio
 ------
 V....D libaom-av1           libaom AV1 (codec av1)
 V....D libaom-av1           libaom AV1 (codec av1)
 V....D h264_nvenc           NVIDIA NVENC H.264 encoder (codec h264)
 A....D aac                  AAC (Advanced Audio Coding)
"""
FILTERS = """Filters:
  T.. = Timeline support
  ------
 TS aap               AA->A      Apply Affine Projection algorithm to first audio stream.
 .. abench            A->A       Benchmark part of a filtergraph.
"""


def test_parse_listings() -> None:
    assert parse_encoders(ENCODERS) == ["libaom-av1", "h264_nvenc", "aac"]
    assert parse_filters(FILTERS) == ["aap", "abench"]
    assert parse_hwaccels("Hardware acceleration methods:\ncuda\nvaapi\n\n") == ["cuda", "vaapi"]
    assert parse_version("ffmpeg version n7.1-3 Copyright (c) 2000\nbuilt with gcc") == "n7.1-3"
    assert parse_version("") == "unknown"


@pytest.mark.parametrize(
    ("stderr", "reason"),
    [
        (
            "[h264_nvenc @ 0x1] Cannot load libcuda.so.1\n"
            "[vost#0:0/h264_nvenc @ 0x2] [enc:h264_nvenc @ 0x3] Error while opening encoder - x\n"
            "[out#0/null @ 0x4] Nothing was written into output file, because ...\n",
            "Cannot load libcuda.so.1",
        ),
        (
            "[h264_nvenc @ 0x1] OpenEncodeSessionEx failed: unsupported device (2)\n"
            "[h264_nvenc @ 0x1] No capable devices found\nConversion failed!\n",
            "No capable devices found",
        ),
        (
            "Error parsing global options: Invalid argument\n",
            "Error parsing global options: Invalid argument",
        ),
        ("", "test encode failed (ffmpeg exit status 1)"),
    ],
)
def test_failure_reason(stderr: str, reason: str) -> None:
    assert failure_reason(stderr, 1) == reason


def test_plan_drops_what_hardware_cannot_carry() -> None:
    nvidia_node = [RenderNode("/dev/dri/renderD128", "nvidia")]
    todo = plan(["libx264", "h264_vaapi", "av1_nvenc", "h264_amf", "mjpeg_qsv"], [], nvidia_node)
    dropped = {d.name: d.reason for d in todo.dropped}
    assert dropped["h264_vaapi"] == "no render node with a vaapi driver (drivers: nvidia)"
    assert dropped["av1_nvenc"] == NO_NVENC_GPU
    assert dropped["libx265"] == NOT_IN_BUILD
    assert "h264_amf" not in dropped and "mjpeg_qsv" not in dropped  # not Flotilla's encoders
    assert [c.name for c in todo.test] == ["libx264"]


def test_plan_without_hw_verification_trusts_nvml() -> None:
    gpus = [gpu(nvenc=True, codecs=("h264", "hevc"))]
    todo = plan(["libx264", "h264_nvenc", "av1_nvenc"], gpus, [], verify_hw=False)
    assert todo.accept == ["h264_nvenc"]
    assert [c.name for c in todo.test] == ["libx264"]
    assert {d.name for d in todo.dropped} >= {"av1_nvenc"}


@pytest.mark.parametrize(
    ("logical", "threads", "slots"), [(2, 2, 1), (1, 4, 1), (16, 2, 8), (64, 3, 21)]
)
def test_cpu_slots(logical: int, threads: int, slots: int) -> None:
    assert cap.cpu_slots(logical, threads) == slots


@pytest.mark.parametrize(
    ("card", "per_job_mb", "slots"),
    [
        (gpu(nvenc=False), 1024, 0),  # H200-like: no NVENC engine, no NVENC slots
        (gpu(nvenc=True, memory_gib=16), 1024, cap.DEFAULT_NVENC_SESSIONS),
        (gpu(nvenc=True, memory_gib=4), 1024, 4),  # memory binds
        (gpu(nvenc=True, memory_gib=16, limit=3), 1024, 3),  # a reported session limit binds
        (gpu(nvenc=True, memory_gib=1), 2048, 0),
    ],
)
def test_gpu_slots(card: GpuInfo, per_job_mb: int, slots: int) -> None:
    assert cap.gpu_slots(card, per_job_mb) == slots


@pytest.mark.parametrize(
    ("verified", "wanted", "pools"),
    [
        (["libx264", "aac"], [], ["cpu"]),
        (["aac"], [], []),
        (["libx264", "h264_nvenc", "hevc_qsv"], [], ["cpu", "nvenc", "qsv"]),
        (["h264_vaapi", "libx264"], ["vaapi", "nvenc"], ["vaapi"]),
        (["libx264", "h264_nvenc"], ["nvenc"], ["nvenc"]),
    ],
)
def test_pools_served(verified: list[str], wanted: list[str], pools: list[str]) -> None:
    assert cap.pools_served(verified, wanted) == pools


@pytest.mark.parametrize(
    ("pools", "overrides", "slots"),
    [
        (["cpu", "nvenc"], {}, {"cpu": 4, "nvenc": 8 + 2}),
        (["cpu", "nvenc"], {"nvenc": 3}, {"cpu": 4, "nvenc": 3}),
        (["cpu", "nvenc"], {"cpu": 0}, {"nvenc": 10}),  # overridden to 0: not served
        (["qsv", "vaapi"], {}, {"qsv": 4, "vaapi": 8}),
        (["cpu"], {"qsv": 5}, {"cpu": 4}),  # an override does not add a pool
    ],
)
def test_plan_slots(pools: list[str], overrides: dict[str, int], slots: dict[str, int]) -> None:
    gpus = [gpu(nvenc=True, memory_gib=24), gpu(nvenc=True, memory_gib=2), gpu(nvenc=False)]
    got = cap.plan_slots(
        pools,
        overrides,
        logical_cores=8,
        threads_per_job=2,
        gpus=gpus,
        gpu_memory_per_job_mb=1024,
        render_nodes={"qsv": 1, "vaapi": 2},
    )
    assert got == slots


def test_verified_nvenc_without_nvml_data_gets_one_slot() -> None:
    assert (
        cap.measured_slots(
            "nvenc",
            logical_cores=8,
            threads_per_job=2,
            gpus=[],
            gpu_memory_per_job_mb=1024,
            render_nodes={},
        )
        == 1
    )


def test_capabilities_changed_ignores_volatile_fields() -> None:
    card = msgspec.structs.replace(gpu(nvenc=True), utilization_percent=3.0)
    base = NodeCapabilities(
        node_id="n1",
        hostname="h",
        daemon_version="1",
        cpu=CpuInfo(model="x", physical_cores=1, logical_cores=2),
        memory_total_bytes=1,
        disk_total_bytes=10,
        disk_free_bytes=5,
        gpus=[card],
        ffmpeg=FfmpegInfo(path="ffmpeg", version="7"),
        verified_encoders=["libx264"],
    )
    moved_card = msgspec.structs.replace(card, utilization_percent=90.0, temperature_c=71.0)
    moved = msgspec.structs.replace(base, disk_free_bytes=1, gpus=[moved_card])
    assert not capabilities_changed(base, moved)
    assert capabilities_changed(base, msgspec.structs.replace(base, verified_encoders=[]))
    assert capabilities_changed(None, base)


# --- host -------------------------------------------------------------------------------------


async def test_host_helpers(tmp_path: Path) -> None:
    assert (
        cpu_model("processor\t: 0\nmodel name\t: Example CPU @ 3.0GHz\n") == "Example CPU @ 3.0GHz"
    )
    assert cpu_model("processor\t: 0\nHardware\t: BCM2835\n") is None
    assert nearest_existing(tmp_path / "a" / "b") == tmp_path
    total, free = await disk_usage(tmp_path / "not" / "yet")
    assert total >= free > 0
    assert await render_nodes(tmp_path / "no-dri", tmp_path) == []
