"""Topology against a real nats-server: idempotent, server-side partitioning, clear conflicts."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client

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
