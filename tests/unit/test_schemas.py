"""Wire contract: every type round-trips, bad messages fail with a clear DecodeError only."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas.alerts import Alert
from schemas.api import JobInfo, JobListRequest, SubmitReply
from schemas.codec import MAX_MESSAGE_BYTES, DecodeError, Decoder, encode
from schemas.control_msgs import NodeCommand
from schemas.export import SCHEMA_DIR, render_all
from schemas.jobs import JobSpec, Requirements, pool_of
from schemas.nodes import CpuInfo, FfmpegInfo, Heartbeat, NodeCapabilities, NodeRecord
from schemas.operations import (
    Analyze,
    Canary,
    Concat,
    Package,
    Probe,
    Rung,
    Thumbnail,
    Transcode,
)
from schemas.registry import EVENT_DECODER, JOB_DECODER, WIRE_TYPES
from schemas.results import JobResult, OutputFile

NOW = time.time()


def _caps() -> NodeCapabilities:
    return NodeCapabilities(
        node_id="n1",
        hostname="box1",
        daemon_version="0.1.0",
        cpu=CpuInfo(model="x", physical_cores=2, logical_cores=4),
        memory_total_bytes=1 << 30,
        disk_total_bytes=1 << 40,
        disk_free_bytes=1 << 39,
        ffmpeg=FfmpegInfo(path="/usr/bin/ffmpeg", version="7.1"),
        verified_encoders=["libx264"],
        pools=["cpu"],
        slots={"cpu": 2},
    )


def _job(op: Any, **kw: Any) -> JobSpec:
    return JobSpec(
        job_id="job-1", input="file:///in.mp4", output="file:///out.mp4", operation=op, **kw
    )


SAMPLES: list[msgspec.Struct] = [
    _job(Transcode(codec="hevc", height=720)),
    JobSpec(
        job_id="job-1",
        input="file:///in.mp4",
        output="file:///out.webm",
        operation=Transcode(
            codec="vp9",
            container="webm",
            audio_codec="opus",
            crf=None,
            rate_control="vbr",
            bitrate_kbps=1500,
        ),
    ),
    _job(Analyze(reference="file:///ref.mp4")),
    _job(
        Package(
            ladder=[Rung(height=720, bitrate_kbps=3000), Rung(height=360, bitrate_kbps=800)],
            dash=True,
        )
    ),
    JobSpec(job_id="p", input="file:///in.mp4", operation=Probe(deep=True)),
    _job(Thumbnail(sprite=True, tiles=9, columns=3)),
    JobSpec(
        job_id="j",
        input="file:///c0.mp4",
        output="file:///out.mkv",
        operation=Concat(chunks=["file:///c0.mp4", "s3://b/c1.mp4"], audio="file:///a.m4a"),
    ),
    JobSpec(
        job_id="c",
        input="canary:",
        operation=Canary(),
        priority="high",
        requirements=Requirements(pool="nvenc", accel="nvenc", labels={"site": "ams"}),
    ),
    _caps(),
    Heartbeat(node_id="n1", ts=NOW, free_slots={"cpu": 1}, running_jobs=["job-1"]),
    NodeRecord(capabilities=_caps(), heartbeat=Heartbeat(node_id="n1", ts=NOW)),
    Alert(
        alert_id="a1",
        rule="node_offline",
        severity="warning",
        state="firing",
        subject="n1",
        summary="node n1 offline",
        fired_at=NOW,
    ),
    NodeCommand(verb="cancel", job_id="job-1"),
    SubmitReply(job_id="job-1", subject="flotilla.jobs.cpu.low.1.acme.job-1", stream="S", seq=1),
    JobInfo(
        job_id="job-1",
        tenant="t",
        state="running",
        pool="cpu",
        priority="normal",
        operation="transcode",
    ),
    JobListRequest(state="failed", limit=10),
    ev.Accepted(
        event_id="e1",
        job_id="job-1",
        node_id="n1",
        ts=NOW,
        pool="cpu",
        priority="normal",
        tenant="t",
        operation="transcode",
    ),
    ev.Accepted(
        event_id="e1s",
        job_id="job-1",
        node_id="n1",
        ts=NOW,
        pool="cpu",
        priority="normal",
        tenant="t",
        operation="probe",
        spec=JobSpec(job_id="job-1", tenant="t", input="file:///a", operation=Probe()),
    ),
    ev.Progress(event_id="e2", job_id="job-1", node_id="n1", ts=NOW, percent=50.0, fps=30.0),
    ev.Completed(
        event_id="e3",
        job_id="job-1",
        node_id="n1",
        ts=NOW,
        result=JobResult(
            wall_seconds=1.0, outputs=[OutputFile(uri="file:///o", size_bytes=1, sha256="0" * 64)]
        ),
    ),
    ev.Failed(
        event_id="e4",
        job_id="job-1",
        node_id="n1",
        ts=NOW,
        reason="bad",
        final=True,
        error_kind="permanent",
        stderr_tail="x",
    ),
    ev.CapabilitiesChanged(event_id="e5", node_id="n1", ts=NOW, capabilities=_caps()),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: msgspec.Struct) -> None:
    data = encode(message)
    assert json.loads(data)["v"] == 1
    assert Decoder(type(message)).decode(data) == message


def test_events_decode_through_the_union() -> None:
    for message in SAMPLES:
        if isinstance(message, ev.Accepted | ev.Progress | ev.Completed | ev.Failed):
            assert EVENT_DECODER.decode(encode(message)) == message


def test_an_accepted_event_from_an_older_node_has_no_spec() -> None:
    # What a node from before `spec` sends: a newer control plane must still fold it.
    old = {"v": 1, "kind": "accepted", "event_id": "e1", "job_id": "j1", "node_id": "n1",
           "attempt": 1, "ts": NOW, "pool": "cpu", "priority": "normal", "tenant": "t",
           "operation": "probe", "stream_seq": 7, "submitted_ts": NOW}  # fmt: skip
    event = EVENT_DECODER.decode(json.dumps(old).encode())
    assert isinstance(event, ev.Accepted) and event.spec is None and event.stream_seq == 7


def test_an_accepted_event_carries_the_largest_job() -> None:
    # A job just under the job limit makes an `accepted` event over it, which must still decode.
    spec = JobSpec(job_id="j1", input="file:///a", operation=Probe(), metadata={"k": ""})
    pad = MAX_MESSAGE_BYTES - len(encode(spec)) - 1
    spec = msgspec.structs.replace(spec, metadata={"k": "x" * pad})
    assert JOB_DECODER.decode(encode(spec)) == spec
    event = ev.Accepted(event_id="e1", job_id="j1", node_id="n1", ts=NOW, pool="cpu",
                        priority="normal", tenant="t", operation="probe", spec=spec)  # fmt: skip
    assert len(encode(event)) > MAX_MESSAGE_BYTES
    assert EVENT_DECODER.decode(encode(event)) == event


def _job_dict(**op: Any) -> dict[str, Any]:
    return {
        "job_id": "j1",
        "input": "file:///a",
        "output": "file:///b",
        "operation": {"op": "transcode", **op},
    }


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d.update(v=2), "unsupported schema version 2"),
        (lambda d: d.update(job_id="a.b"), "$.job_id"),
        (lambda d: d.update(job_id="x" * 200), "$.job_id"),
        (lambda d: d.update(extra=1), "unknown field `extra`"),
        (lambda d: d["operation"].update(crf=99), "$.operation.crf"),
        (lambda d: d["operation"].update(height=100_000), "$.operation.height"),
        (lambda d: d["operation"].update(bitrate_kbps=1), "$.operation.bitrate_kbps"),
        (lambda d: d["operation"].update(codec="mpeg2"), "$.operation.codec"),
        (lambda d: d["operation"].update(container="webm"), "cannot go in container"),
        (lambda d: d["operation"].update(rate_control="cbr"), "needs `bitrate_kbps`"),
        (lambda d: d["operation"].update(op="rm -rf"), "Invalid value 'rm -rf'"),
        (lambda d: d.pop("output"), "needs `output`"),
        (lambda d: d.update(max_attempts=0), "$.max_attempts"),
        (lambda d: d.update(priority="urgent"), "$.priority"),
        (lambda d: d.update(operation={"op": "package", "ladder": []}), "$.operation.ladder"),
        (
            lambda d: d.update(
                operation={
                    "op": "package",
                    "segment_seconds": 0.1,
                    "ladder": [{"height": 720, "bitrate_kbps": 900}],
                }
            ),
            "$.operation.segment_seconds",
        ),
    ],
)
def test_bad_jobs_name_the_problem(mutate: Any, needle: str) -> None:
    data = _job_dict()
    mutate(data)
    with pytest.raises(DecodeError) as info:
        JOB_DECODER.decode(json.dumps(data).encode())
    assert needle in str(info.value)


def _with_uri(field: str, value: str) -> dict[str, Any]:
    data = _job_dict()
    if field == "operation.reference":
        data["operation"] = {"op": "analyze", "reference": value}
    else:
        data[field] = value
    return data


BAD_SCHEMES = [
    "gopher://127.0.0.1:70/_x", "javascript:alert(1)", "ftp://h/x",
    "data:text/plain,x", "concat:/etc/passwd|/etc/hosts", "lavfi:testsrc", "pipe:0", "/etc/passwd",
    "relative/path.mp4", " http://h/x", "http:/h/x", "http://", "dict://127.0.0.1:11211/",
]  # fmt: skip
#: field -> URIs it takes (each scheme, in any case, in the forms the daemon reads).
URI_FIELDS: dict[str, list[str]] = {
    "callback_url": ["http://h/hook", "HTTPS://h:8443/hook?x=1", "http://[::1]/", "http://10.0.0.1/"],
    "input": ["file:///srv/a.mp4", "FILE:///a", "file:/a", "file://localhost/a", "http://h/a.mp4",
              "https://h/a.mp4", "nats-obj://flotilla_media/a.mp4", "Nats-Obj://b/k",
              "s3://bucket/a.mp4", "S3://b/k"],
    # http(s) outputs are presigned PUT URLs (the daemon checks the host and the signature's
    # presence against its allow-list).
    "output": ["file:///srv/b.mp4", "file:/b", "nats-obj://flotilla_media/b.mp4", "s3://b/b.mp4",
               "https://h/b.mp4?X-Amz-Signature=00", "http://h/b.mp4?sig=1"],
    "operation.reference": ["file:///r.mp4", "https://h/r.mp4", "nats-obj://b/r.mp4",
                            "s3://b/r.mp4"],
}  # fmt: skip
#: field -> schemes that are fine elsewhere but not here.
WRONG_HERE = {
    "callback_url": [
        "file:///etc/passwd",
        "FILE:/etc/passwd",
        "nats-obj://b/k",
        "s3://b/k",
        "canary:",
    ],
    "input": [],
    "output": ["canary:"],
    "operation.reference": ["canary:"],
}


@pytest.mark.parametrize("field", list(URI_FIELDS))
def test_uri_fields_refuse_other_schemes_naming_the_field(field: str) -> None:
    for value in BAD_SCHEMES + WRONG_HERE[field]:
        with pytest.raises(DecodeError) as info:
            JOB_DECODER.decode(json.dumps(_with_uri(field, value)).encode())
        assert f"at `$.{field}`" in str(info.value), value
        assert "expected a URI starting with" in str(info.value), value


@pytest.mark.parametrize("field", list(URI_FIELDS))
def test_uri_fields_take_their_schemes(field: str) -> None:
    for value in URI_FIELDS[field]:
        job = JOB_DECODER.decode(json.dumps(_with_uri(field, value)).encode())
        ref = getattr(job.operation, "reference", None)
        assert value in (job.input, job.output, job.callback_url, ref)


def test_canary_input_is_for_canary_jobs_only() -> None:
    with pytest.raises(DecodeError, match="canary jobs only"):
        JOB_DECODER.decode(json.dumps(_with_uri("input", "canary:")).encode())
    doc = {"job_id": "c", "input": "canary://", "operation": {"op": "canary"}}
    assert JOB_DECODER.decode(json.dumps(doc).encode()).input == "canary://"


def test_exported_job_schema_carries_the_scheme_patterns() -> None:
    schema = json.loads(render_all()["job.schema.json"])
    props = schema["$defs"]["JobSpec"]["properties"]
    callback = next(t for t in props["callback_url"]["anyOf"] if t.get("type") == "string")
    assert "pattern" in props["input"] and "pattern" in callback
    assert "pattern" in schema["$defs"]["Analyze"]["properties"]["reference"]


def test_oversized_and_truncated_messages() -> None:
    with pytest.raises(DecodeError, match="over the"):
        JOB_DECODER.decode(b" " * (MAX_MESSAGE_BYTES + 1))
    good = json.dumps(_job_dict()).encode()
    for cut in range(len(good)):
        with pytest.raises(DecodeError):
            JOB_DECODER.decode(good[:cut])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=2000, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_any_bytes_only_raise_decode_error(data: bytes) -> None:
    for decoder in (JOB_DECODER, EVENT_DECODER):
        with contextlib.suppress(DecodeError):
            decoder.decode(data)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "job_id",
                "input",
                "output",
                "operation",
                "priority",
                "max_attempts",
                "v",
                "tenant",
                "requirements",
            ]
        ),
        json_values,
        max_size=9,
    )
)
def test_fuzz_job_shaped_objects(data: dict[str, Any]) -> None:
    with contextlib.suppress(DecodeError):
        JOB_DECODER.decode(json.dumps(data).encode())


def test_pool_rule() -> None:
    assert pool_of(Requirements()) == "cpu"
    assert pool_of(Requirements(accel="nvenc")) == "nvenc"
    assert pool_of(Requirements(accel="software")) == "cpu"
    assert pool_of(Requirements(pool="gpu-big")) == "gpu-big"


def test_exported_json_schemas_match_the_structs() -> None:
    rendered = render_all()
    on_disk = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    assert set(on_disk) == set(rendered), "run `flotilla schema export` and commit schemas/json"
    for name, text in rendered.items():
        assert on_disk[name] == text, f"{name} drifted: run `flotilla schema export`"
    assert len(rendered) == len(WIRE_TYPES)
