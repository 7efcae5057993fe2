"""Node commands: `nodes` (the fleet as a table or JSON), `drain NODE [--wait]`, `resume NODE`."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from control.cli.apiclient import ApiClient
from control.cli.flags import add_client_flags, add_json_flag
from control.cli.format import ago, print_json, table
from control.cli.nodewait import DrainWatch, drained, node_status
from control.errors import CliError, NotFound
from schemas import api

HEADERS = ("node", "state", "pools", "gpus", "encoders", "used/free", "load/cpu", "last seen")
POLL_S = 1.0
MISSING_POLLS = 3


def register(sub: Any) -> None:
    """Add the node commands to the `flotilla` parser (`sub` is its subparsers action)."""
    p = sub.add_parser("nodes", help="the fleet's nodes: state, pools, GPUs, encoders, slots")
    add_client_flags(p, json_flag=False)
    add_json_flag(p, 'one JSON document: {"nodes": [...]}')
    p.set_defaults(handler=list_nodes)

    p = sub.add_parser("drain", help="stop a node pulling; running jobs finish or are handed back")
    p.add_argument("node_id", metavar="NODE")
    add_client_flags(p, json_flag=False)
    add_json_flag(p, 'one JSON document at the end: {"node_id", "ok", "message", "outcome"}')
    p.add_argument(
        "--deadline",
        type=float,
        metavar="S",
        help="seconds running jobs may take before they are handed back "
        "(default: the daemon's drain_deadline)",
    )
    p.add_argument("--wait", action="store_true", help="block until no job runs on the node")
    p.add_argument(
        "--timeout", type=float, default=900.0, metavar="N", help="with --wait: give up (exit 1) "
        "after N seconds (default 900)",
    )  # fmt: skip
    p.set_defaults(handler=drain)

    p = sub.add_parser("resume", help="let a drained node pull jobs again")
    p.add_argument("node_id", metavar="NODE")
    add_client_flags(p, json_flag=False)
    add_json_flag(p, 'one JSON document: {"node_id", "ok", "message"}')
    p.set_defaults(handler=resume)


def summary(n: api.NodeInfo) -> dict[str, Any]:
    """One node for scripts: the table's facts as fields, plus the raw record."""
    caps, hb = n.capabilities, n.heartbeat
    return {
        "node_id": n.node_id,
        "state": n.state,
        "last_seen": n.last_seen,
        "pools": caps.pools if caps else [],
        "gpus": [g.name for g in caps.gpus] if caps else [],
        "verified_encoders": caps.verified_encoders if caps else [],
        "slots": hb.slots if hb else {},
        "running_jobs": hb.running_jobs if hb else [],
        "running": n.running if n.running is not None else len(hb.running_jobs) if hb else 0,
        "load1": hb.load1 if hb else None,
        "cpu_percent": hb.cpu_percent if hb else None,
        "capabilities": caps,
        "heartbeat": hb,
    }


def _row(n: api.NodeInfo, now: float) -> list[object]:
    caps, hb = n.capabilities, n.heartbeat
    pools = ",".join(f"{p}:{hb.slots.get(p, 0)}" if hb else p for p in (caps.pools if caps else []))
    gpus: dict[str, int] = {}
    for g in caps.gpus if caps else []:
        gpus[g.name] = gpus.get(g.name, 0) + 1
    # Free slots in the heartbeat include those a waiting fetch holds: running jobs are "used".
    # `running` counts every tenant's jobs; a tenant key sees only its own job ids.
    used = n.running if n.running is not None else len(hb.running_jobs) if hb else 0
    total = sum(hb.slots.values()) if hb else 0
    return [
        n.node_id,
        n.state,
        pools or None,
        ", ".join(f"{c}x {name}" for name, c in gpus.items()) or None,
        ",".join(caps.verified_encoders) if caps and caps.verified_encoders else None,
        f"{used}/{max(0, total - used)}" if hb else None,
        f"{hb.load1:.2f}/{hb.cpu_percent:.0f}%" if hb else None,
        ago(n.last_seen, now),
    ]


#: Pages of node.list read at most (a page holds about 140 typical nodes).
MAX_NODE_PAGES = 1000


async def all_nodes(c: ApiClient) -> list[api.NodeInfo]:
    """Every node, page by page. The first page is asked with an empty body, so a control plane
    from before paging answers it (with every node, and no `next_after`)."""
    reply = await c.call("node.list", api.EmptyRequest(), api.NodeListReply)
    nodes = list(reply.nodes)
    for _ in range(MAX_NODE_PAGES):
        if reply.next_after is None:
            return nodes
        page = api.NodeListRequest(after=reply.next_after)
        reply = await c.call("node.list", page, api.NodeListReply)
        nodes += reply.nodes
    raise CliError(f"node.list gave more than {MAX_NODE_PAGES} pages")


async def _nodes(args: argparse.Namespace) -> list[api.NodeInfo]:
    async with ApiClient.from_args(args) as c:
        return await all_nodes(c)


async def list_nodes(args: argparse.Namespace) -> int:
    nodes = await _nodes(args)
    if args.json:
        print_json({"nodes": [summary(n) for n in nodes]})
    elif not nodes:
        print("no nodes (is a daemon running and connected?)")
    else:
        now = time.time()
        print(table(HEADERS, [_row(n, now) for n in nodes]))
    return 0


def _stopped(node: api.NodeInfo) -> bool:
    """Offline after saying so: a daemon's last heartbeat on a clean exit says `offline`."""
    return (
        node.state == "offline" and node.heartbeat is not None and node.heartbeat.state == "offline"
    )


async def _find(c: ApiClient, node_id: str, tries: int = MISSING_POLLS) -> api.NodeInfo | None:
    """The node as node.list shows it. A miss is asked again: a daemon that has just started
    may not be in the answering instance's view of the node bucket yet."""
    listed: list[api.NodeInfo] = []
    for i in range(tries):
        listed = await all_nodes(c)
        found = next((n for n in listed if n.node_id == node_id), None)
        if found is not None:
            return found
        if i + 1 < tries:
            await asyncio.sleep(0.3)
    return None


async def _known(c: ApiClient, node_id: str) -> api.NodeInfo:
    node = await _find(c, node_id)
    if node is None:
        listed = await all_nodes(c)
        names = ", ".join(n.node_id for n in listed) or "none"
        raise NotFound(f"no node named {node_id!r} (known: {names})")
    return node


async def _command(args: argparse.Namespace, verb: str, request: api.NodeRef) -> api.AckReply:
    """Check the node exists (exit 4 if not), then send the command; ok=false is exit 1."""
    async with ApiClient.from_args(args) as c:
        await _known(c, request.node_id)
        ack = await c.call(f"node.{verb}", request, api.AckReply)
    if not ack.ok:
        raise CliError(f"{request.node_id} refused {verb}: {ack.message or 'no reason given'}")
    if not args.json:
        print(f"{request.node_id}: {ack.message or verb}", flush=True)
    return ack


def _result(node_id: str, ack: api.AckReply, **more: object) -> dict[str, object]:
    return {"node_id": node_id, "ok": ack.ok, "message": ack.message, **more}


async def resume(args: argparse.Namespace) -> int:
    ack = await _command(args, "resume", api.NodeRef(node_id=args.node_id))
    if args.json:
        print_json(_result(args.node_id, ack))
    return 0


async def drain(args: argparse.Namespace) -> int:
    if args.deadline is not None and args.deadline < 0:
        raise ValueError("--deadline must be 0 or more seconds")
    if args.timeout < 0:
        raise ValueError("--timeout must be 0 or more seconds")
    ack = await _command(args, "drain", api.NodeRef(node_id=args.node_id, deadline_s=args.deadline))
    if not args.wait:
        if args.json:
            print_json(_result(args.node_id, ack, outcome="draining"))
        return 0
    outcome = await _wait_drained(args)
    if args.json:
        print_json(_result(args.node_id, ack, outcome=outcome))
    return 0


async def _wait_drained(args: argparse.Namespace) -> str:
    """Poll node.list until the node's heartbeat says draining, nothing running or fetching.
    Returns `drained` or `stopped`; with --json the wait shows nothing on stdout."""
    watch = DrainWatch(args.node_id, sys.stdout, sys.stdout.isatty(), quiet=args.json)
    deadline = time.monotonic() + args.timeout
    async with ApiClient.from_args(args) as c:
        while True:
            # Gone for good only if several reads in a row miss it (see _find).
            node = await _find(c, args.node_id)
            if node is not None and node.state == "offline" and not _stopped(node):
                watch.done(f"{args.node_id}: went offline while draining")
                raise CliError(
                    f"{args.node_id} went offline while draining; "
                    "its jobs are redelivered after the ack wait"
                )
            if node is None or _stopped(node) or drained(node):
                left = node is None or _stopped(node)
                why = "left the fleet (stopped)" if left else "drained, no job running"
                watch.done(f"{args.node_id}: {why}")
                return "stopped" if left else "drained"
            watch.show(node_status(node))
            if time.monotonic() >= deadline:
                watch.done("")
                raise CliError(
                    f"{args.node_id} still {node_status(node)} after {args.timeout:g}s (--timeout)"
                )
            await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
