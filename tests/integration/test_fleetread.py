"""Reading the fleet from the node bucket while nodes write heartbeats: never a short list."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client as NATS

from control.fleetread import node_keys, read_nodes
from control.topology import TopologySettings, ensure_topology
from schemas.subjects import Subjects
from tests.support.noderecords import node_record, put_node


async def test_concurrent_heartbeats_never_hide_a_node(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings())
    names = ["n1", "n2", "n3"]
    for name in names:
        await put_node(js, subjects, node_record(name))
    stop = asyncio.Event()

    async def writer(name: str) -> None:
        for _ in range(2000):  # bounded; stopped early once the reads are done
            if stop.is_set():
                return
            await put_node(js, subjects, node_record(name))

    writers = [asyncio.create_task(writer(n)) for n in names]
    try:
        seen = [len(await read_nodes(js, subjects, offline_after=60.0)) for _ in range(150)]
    finally:
        stop.set()
        await asyncio.gather(*writers)
    assert set(seen) == {3}
    assert await node_keys(js, subjects) == names


async def test_deleted_node_is_left_out(nc: NATS, prefix: str) -> None:
    subjects = Subjects(prefix)
    js = nc.jetstream()
    await ensure_topology(js, subjects, TopologySettings())
    for name in ("a", "b"):
        await put_node(js, subjects, node_record(name))
    kv = await js.key_value(subjects.nodes_bucket)
    await kv.delete("a")
    nodes = await read_nodes(js, subjects, offline_after=60.0)
    assert [n.capabilities.node_id for n in nodes] == ["b"]
