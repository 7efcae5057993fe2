"""Codec-level routing: a job goes to a node whose verified encoders include its codec in the
family it asks for, at submit (fleetfit) and on the node (handed back, never failed there)."""

from __future__ import annotations

from typing import Any

import msgspec

from control.api.fleetfit import rejection, why_not
from control.nodes import FleetNode
from daemon.job.requirements import NodeView, unmet_requirement
from schemas.encoderneeds import encoder_needs, package_family
from schemas.jobs import JobSpec
from tests.support.noderecords import node_record

#: A Turing-era card: NVENC does H.264 and HEVC, no AV1.
TURING = {"libx264", "libx265", "libsvtav1", "aac", "h264_nvenc", "hevc_nvenc"}


def spec(op: dict[str, Any], output: str = "file:///out/o.mp4", **req: Any) -> JobSpec:
    doc = {"job_id": "j", "input": "file:///in/i.mp4", "output": output, "operation": op,
           "requirements": req}  # fmt: skip
    return msgspec.convert(doc, JobSpec)


def transcode(codec: str, **req: Any) -> JobSpec:
    return spec({"op": "transcode", "codec": codec}, **req)


def package(*codecs: str, **req: Any) -> JobSpec:
    ladder = [{"height": 720 - 100 * i, "bitrate_kbps": 1000, "codec": c}
              for i, c in enumerate(codecs)]  # fmt: skip
    return spec({"op": "package", "ladder": ladder}, output="file:///out/pkg", **req)


def node(encoders: set[str], pools: list[str]) -> NodeView:
    return NodeView(pools=pools, verified_encoders=set(encoders))


def test_av1_on_an_nvenc_without_av1_is_handed_back_not_run() -> None:
    view = node(TURING, ["cpu", "nvenc"])
    assert unmet_requirement(transcode("hevc", accel="nvenc"), view) is None
    reason = unmet_requirement(transcode("av1", accel="nvenc"), view)
    assert reason == "no verified encoder for av1 (needs one of av1_nvenc)"
    # The same job under auto may use the software AV1 encoder the node has.
    assert unmet_requirement(transcode("av1"), view) is None


def test_a_withdrawn_encoder_no_longer_meets_its_codec() -> None:
    view = node(TURING, ["cpu", "nvenc"])
    view.withdrawn_encoders = {"hevc_nvenc"}
    assert unmet_requirement(transcode("hevc", accel="nvenc"), view) is not None
    assert unmet_requirement(transcode("h264", accel="nvenc"), view) is None


def test_vp9_has_no_nvenc_encoder_and_software_only_formats_need_software() -> None:
    assert encoder_needs(transcode("vp9", accel="nvenc")) == [("vp9", ())]
    soft = spec({"op": "transcode", "codec": "hevc", "pix_fmt": "yuv444p"})
    assert encoder_needs(soft) == [("hevc", ("libx265",))]
    view = node({"hevc_nvenc", "libx264"}, ["cpu"])
    assert unmet_requirement(soft, view) == "no verified encoder for hevc (needs one of libx265)"


def test_package_ladders_need_every_rung_codec_in_their_family() -> None:
    job = package("h264", "hevc", accel="nvenc")
    assert package_family(job) == "nvenc"
    assert encoder_needs(job) == [("h264", ("h264_nvenc",)), ("hevc", ("hevc_nvenc",))]
    assert unmet_requirement(job, node({"h264_nvenc", "libx265"}, ["nvenc"])) == (
        "no verified encoder for hevc (needs one of hevc_nvenc)"
    )
    # In the nvenc pool under auto, NVENC is preferred but x264 still serves.
    auto = package("h264", pool="nvenc")
    assert package_family(auto) == "nvenc"
    assert encoder_needs(auto) == [("h264", ("libx264", "h264_nvenc"))]
    assert package_family(package("h264")) is None


def fleet(name: str, encoders: set[str], pools: list[str]) -> FleetNode:
    return FleetNode(node_record(name, pools=pools, encoders=sorted(encoders)), "online")


def test_submit_time_fit_checks_the_codec_not_only_the_family() -> None:
    turing = fleet("turing", TURING, ["cpu", "nvenc"])
    ada = fleet("ada", TURING | {"av1_nvenc"}, ["cpu", "nvenc"])
    av1 = transcode("av1", accel="nvenc")
    assert why_not(av1, turing) == "turing has none of the encoders av1_nvenc"
    assert why_not(av1, ada) is None
    assert rejection(av1, [turing]) == (
        "no online node can run this job: turing has none of the encoders av1_nvenc"
    )
    assert rejection(av1, [turing, ada]) is None
