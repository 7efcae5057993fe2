"""Readers of what nodes report and are told ignore fields a newer minor release adds; what
producers send stays strict."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas.codec import DecodeError, Decoder, encode
from schemas.common import PROTOCOL
from schemas.control_msgs import NodeCommand, NodeCommandReply
from schemas.events import Accepted, Completed, NodeStateChanged
from schemas.jobs import JobSpec
from schemas.nodes import CpuInfo, FfmpegInfo, Heartbeat, NodeCapabilities, NodeRecord
from schemas.operations import Probe
from schemas.registry import EVENT_DECODER, JOB_DECODER
from schemas.results import JobResult, OutputFile


def _newer(message: Any, *paths: str) -> bytes:
    """`message` as a newer release sends it: an unknown field at the top and at each path."""
    doc = json.loads(encode(message))
    doc["added_later"] = {"anything": [1, 2]}
    for path in paths:
        node = doc
        for key in path.split("."):
            node = node[int(key)] if key.isdigit() else node[key]
        node["added_later"] = "x"
    return json.dumps(doc).encode()


def _record() -> NodeRecord:
    caps = NodeCapabilities(
        node_id="n1", hostname="n1", daemon_version="9.9.9",
        cpu=CpuInfo(model="m", physical_cores=2, logical_cores=4), memory_total_bytes=1,
        disk_total_bytes=1, disk_free_bytes=1, ffmpeg=FfmpegInfo(path="/f", version="7"),
    )  # fmt: skip
    return NodeRecord(capabilities=caps, heartbeat=Heartbeat(node_id="n1", ts=1.0))


def test_a_newer_nodes_record_is_read() -> None:
    data = _newer(_record(), "capabilities", "capabilities.cpu", "heartbeat")
    assert Decoder(NodeRecord).decode(data) == _record()


def test_a_newer_nodes_events_are_read() -> None:
    done = Completed(
        event_id="e1", job_id="j", tenant="acme", node_id="n1", ts=1.0,
        result=JobResult(outputs=[OutputFile(uri="file:///o", size_bytes=1, sha256="0" * 64)]),
    )  # fmt: skip
    assert EVENT_DECODER.decode(_newer(done, "result", "result.outputs.0")) == done
    state = NodeStateChanged(event_id="e2", node_id="n1", ts=1.0, state="draining")
    assert EVENT_DECODER.decode(_newer(state)) == state


def test_commands_and_replies_of_a_newer_peer_are_read() -> None:
    cmd = NodeCommand(verb="cancel", job_id="j", tenant="acme")
    assert Decoder(NodeCommand).decode(_newer(cmd)) == cmd
    reply = NodeCommandReply(ok=True, node_id="n1")
    assert Decoder(NodeCommandReply).decode(_newer(reply)) == reply


def test_a_node_older_than_the_protocol_field_speaks_the_first_revision() -> None:
    doc = json.loads(encode(_record()))
    del doc["capabilities"]["protocol"]
    assert Decoder(NodeRecord).decode(json.dumps(doc).encode()).capabilities.protocol == 1
    assert PROTOCOL >= 2  # this release names jobs by (tenant, job_id)


def test_what_producers_send_stays_strict() -> None:
    spec = JobSpec(job_id="j", input="file:///i", operation=Probe())
    with pytest.raises(DecodeError, match="unknown field `added_later`"):
        JOB_DECODER.decode(_newer(spec))
    # The spec an `accepted` carries is the producer's, as strict: a newer daemon's job field
    # is refused by an older control plane, which is why the control plane upgrades first.
    accepted = Accepted(
        event_id="e", job_id="j", tenant="default", node_id="n1", ts=1.0, pool="cpu",
        priority="normal", operation="probe", spec=spec,
    )  # fmt: skip
    with pytest.raises(DecodeError, match="added_later"):
        EVENT_DECODER.decode(_newer(accepted, "spec"))
