"""Topology against a real nats-server: idempotent, server-side partitioning, clear conflicts."""

from __future__ import annotations

import dataclasses
import json

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, PersistMode, StorageType
from nats.js.kv import KeyValue

from control.topology import TopologyError, TopologySettings, ensure_topology
from schemas.subjects import Subjects, partition_of


async def test_init_is_idempotent(nc: Client, prefix: str) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    first = await ensure_topology(js, subjects, TopologySettings())
    assert f"stream {subjects.jobs_stream}" in first.created
    assert f"bucket {subjects.nodes_bucket}" in first.created
    second = await ensure_topology(js, subjects, TopologySettings())
    assert second.created == [] and second.updated == []
    assert len(second.unchanged) == len(first.created)


async def test_server_computes_the_partition(nc: Client, prefix: str) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    for n in range(40):
        job_id = f"job-{n:04d}"
        # A producer with no project code: plain publish, `<tenant>.<job_id>` as Nats-Msg-Id.
        ack = await js.publish(
            f"{prefix}.submit.acme.cpu.low.{job_id}",
            json.dumps({"job_id": job_id}).encode(),
            headers={"Nats-Msg-Id": f"acme.{job_id}"},
        )
        stored = await js.get_msg(subjects.jobs_stream, ack.seq)
        assert stored.subject == subjects.job_stored("acme", "cpu", "low", job_id)
        tokens = stored.subject.split(".")
        assert tokens[4] == str(partition_of(job_id, 8)) and tokens[5] == "acme"
    # README's worked example, as the server computes it.
    ack = await js.publish(f"{prefix}.submit.acme.cpu.normal.job-0042", b"{}")
    stored = await js.get_msg(subjects.jobs_stream, ack.seq)
    assert stored.subject == f"{prefix}.jobs.cpu.normal.5.acme.job-0042"


async def test_resubmit_is_deduplicated(nc: Client, prefix: str) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    subject = subjects.submit("default", "cpu", "normal", "dup-1")
    first = await js.publish(subject, b"{}", headers={"Nats-Msg-Id": "dup-1"})
    again = await js.publish(subject, b"{}", headers={"Nats-Msg-Id": "dup-1"})
    assert again.duplicate and again.seq == first.seq


async def test_update_and_incompatible_change(nc: Client, prefix: str) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await ensure_topology(js, subjects, TopologySettings(pools=["cpu"]))
    updated = await ensure_topology(js, subjects, TopologySettings(pools=["cpu"], ack_wait=90))
    assert any("ack_wait" in u for u in updated.updated)
    with pytest.raises(TopologyError, match="max_waiting"):
        await ensure_topology(js, subjects, TopologySettings(pools=["cpu"], max_waiting=64))


async def test_the_node_bucket_is_a_kv_bucket_that_does_not_fsync_each_beat(
    nc: Client, prefix: str
) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    report = await ensure_topology(js, subjects, TopologySettings(node_ttl=30.0))
    assert f"bucket {subjects.nodes_bucket}" in report.created and report.advice == []
    ours = (await js.stream_info(f"KV_{subjects.nodes_bucket}")).config
    assert ours.persist_mode == PersistMode.ASYNC
    # Laid out as nats-py lays out a bucket with the same settings, so every client reads it.
    reference = await _bucket_as_nats_py_makes_it(js, f"{subjects.nodes_bucket}_ref")
    theirs = (await js.stream_info(reference._stream)).config
    skip = {"name", "subjects", "persist_mode", "metadata"}
    fields = [f.name for f in dataclasses.fields(ours) if f.name not in skip]
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(theirs, f) for f in fields}
    kv = await js.key_value(subjects.nodes_bucket)
    revision = await kv.put("n1", b"{}")
    assert (await kv.get("n1")).revision == revision


async def test_an_older_node_bucket_is_kept_and_the_report_says_how_to_renew_it(
    nc: Client, prefix: str
) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    # As earlier versions created it: every put fsynced.
    await _bucket_as_nats_py_makes_it(js, subjects.nodes_bucket)
    kv = await js.key_value(subjects.nodes_bucket)
    await kv.put("n1", b"{}")
    report = await ensure_topology(js, subjects, TopologySettings())
    assert f"bucket {subjects.nodes_bucket}" in report.unchanged
    (advice,) = report.advice
    assert "persist_mode async" in advice and "flotilla nats init --renew-node-bucket" in advice
    assert (await kv.get("n1")).value == b"{}"  # nothing was dropped


async def test_renewing_the_node_bucket_re_creates_it_without_fsyncs(
    nc: Client, prefix: str
) -> None:
    js = nc.jetstream()
    subjects = Subjects(prefix)
    await _bucket_as_nats_py_makes_it(js, subjects.nodes_bucket)
    report = await ensure_topology(js, subjects, TopologySettings(), renew_node_bucket=True)
    assert f"bucket {subjects.nodes_bucket} (persist_mode, re-created)" in report.updated
    assert report.advice == []
    info = await js.stream_info(f"KV_{subjects.nodes_bucket}")
    assert info.config.persist_mode == PersistMode.ASYNC
    again = await ensure_topology(js, subjects, TopologySettings(), renew_node_bucket=True)
    assert f"bucket {subjects.nodes_bucket}" in again.unchanged and again.updated == []


async def _bucket_as_nats_py_makes_it(js: JetStreamContext, bucket: str) -> KeyValue:
    """A 30 s node bucket made the client library's way (as earlier versions made it)."""
    cfg = KeyValueConfig(bucket=bucket, history=1, ttl=30.0, limit_marker_ttl=1.0)
    return await js.create_key_value(cfg, storage=StorageType.FILE)
