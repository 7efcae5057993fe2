"""`flotilla workflow submit|status|cancel|list`: a DAG of jobs as one submission.

`flotilla chunked submit` is a workflow too: the chunked encode (schemas/chunked.py) is expanded
here, on the client, and the workflow it makes is submitted with `workflow.submit`, so the
control plane checks and runs it like any other and `workflow status` follows it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, get_args

import msgspec

from control.cli.apiclient import ApiClient
from control.cli.flags import add_client_flags
from control.cli.format import ago, print_json, table
from control.cli.jobflags import file_uri, load_job_file, new_job_id
from control.errors import BadInput, CliError
from schemas.api import AckReply
from schemas.chunked import ChunkedSpec
from schemas.operations import Preset
from schemas.workflows import (
    WORKFLOW_STATES,
    WorkflowCancelRequest,
    WorkflowInfo,
    WorkflowListReply,
    WorkflowListRequest,
    WorkflowRef,
    WorkflowSpec,
    WorkflowSubmitReply,
    WorkflowSubmitRequest,
)


def register(sub: Any) -> None:
    p = sub.add_parser("workflow", help="submit, follow and cancel workflows (a DAG of jobs)")
    wsub = p.add_subparsers(dest="workflow_cmd", required=True, metavar="ACTION")
    s = wsub.add_parser("submit", help="submit a workflow from a JSON or TOML file (- for stdin)")
    s.add_argument("path", metavar="FILE")
    s.add_argument("--tenant", help="the workflow's tenant (wins over the file's)")
    add_client_flags(s)
    s.set_defaults(handler=submit)
    for name, handler, text in (
        ("status", status, "a workflow's state and each step's"),
        ("cancel", cancel, "cancel a workflow: stop its running steps, submit no more"),
    ):
        c = wsub.add_parser(name, help=text)
        c.add_argument("workflow_id", metavar="ID")
        c.add_argument("--tenant", help="whose workflow (an operator names it when ids clash)")
        add_client_flags(c)
        c.set_defaults(handler=handler)
        if name == "cancel":
            c.add_argument("--reason", default="workflow cancelled")
    ls = wsub.add_parser("list", help="workflows, newest first")
    ls.add_argument("--state", choices=WORKFLOW_STATES)
    ls.add_argument("--tenant")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (1-1000)")
    add_client_flags(ls)
    ls.set_defaults(handler=list_workflows)
    _register_chunked(sub)


def _register_chunked(sub: Any) -> None:
    p = sub.add_parser("chunked", help="one long encode split into chunks many nodes encode")
    csub = p.add_subparsers(dest="chunked_cmd", required=True, metavar="ACTION")
    s = csub.add_parser(
        "submit",
        help="submit a chunked encode of INPUT into OUTPUT (.mp4/.mkv/.mov); prints the "
        "workflow id (follow it with `flotilla workflow status`)",
    )
    s.add_argument("input", metavar="INPUT", help="path or URI the nodes read")
    s.add_argument("output", metavar="OUTPUT", help="path or URI of the joined file")
    s.add_argument("--duration", type=float, required=True, metavar="S",
                   help="the input's length in seconds: it sets the chunk borders")  # fmt: skip
    s.add_argument("--chunk-seconds", type=float, default=60.0, metavar="S")
    s.add_argument("--codec", choices=("h264", "hevc"), default="h264")
    s.add_argument("--crf", type=int, default=23)
    s.add_argument("--preset", choices=get_args(Preset), default="medium")
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--gop-size", type=int, default=48, help="frames between keyframes")
    s.add_argument("--audio-codec", choices=("aac", "none"), default="aac")
    s.add_argument("--audio-bitrate", type=int, default=128, metavar="KBPS")
    s.add_argument("--max-av-drift-ms", type=float, default=100.0)
    s.add_argument("--workflow-id", help="default: chunked-<time>-<random>")
    s.add_argument("--tenant")
    s.add_argument("--priority", choices=("high", "normal", "low"))
    s.add_argument("--pool", help="the pool every step runs in")
    s.add_argument("--accel", choices=("auto", "software", "nvenc", "qsv", "vaapi"),
                   help="the chunk encodes' encoder family")  # fmt: skip
    s.add_argument("--dry-run", action="store_true",
                   help="print the workflow it would submit (JSON) and submit nothing")  # fmt: skip
    add_client_flags(s)
    s.set_defaults(handler=submit_chunked)


def chunked_spec(args: argparse.Namespace) -> ChunkedSpec:
    """The chunked encode the flags describe; BadInput naming the problem."""
    doc: dict[str, Any] = {
        "workflow_id": args.workflow_id or new_job_id().replace("job-", "chunked-", 1),
        "input": file_uri(args.input), "output": file_uri(args.output),
        "duration_seconds": args.duration, "chunk_seconds": args.chunk_seconds,
        "codec": args.codec, "crf": args.crf, "preset": args.preset, "gop_size": args.gop_size,
        "audio_codec": args.audio_codec, "audio_bitrate_kbps": args.audio_bitrate,
        "max_av_drift_ms": args.max_av_drift_ms,
    }  # fmt: skip
    for flag in ("width", "height", "tenant", "priority"):
        if getattr(args, flag) is not None:
            doc[flag] = getattr(args, flag)
    req = {k: v for k, v in (("pool", args.pool), ("accel", args.accel)) if v is not None}
    if req:
        doc["requirements"] = req
    try:
        return msgspec.convert(doc, ChunkedSpec)
    except (msgspec.ValidationError, ValueError) as exc:
        raise BadInput(f"invalid chunked encode: {exc}") from exc


async def submit_chunked(args: argparse.Namespace) -> int:
    chunked = chunked_spec(args)
    try:
        spec = chunked.expand()
    except (msgspec.ValidationError, ValueError) as exc:
        raise BadInput(f"invalid chunked encode: {exc}") from exc
    if args.dry_run:
        print_json(spec)
        return 0
    async with ApiClient.from_args(args) as client:
        req = WorkflowSubmitRequest(workflow=spec)
        reply = await client.call("workflow.submit", req, WorkflowSubmitReply)
    if args.json:
        print_json(reply)
    else:
        chunks = len(chunked.borders())
        dup = " (duplicate: already submitted)" if reply.duplicate else ""
        print(f"{reply.workflow_id}{dup}")
        print(f"{chunks} chunks of {chunked.chunk_seconds:g} s; follow it with `flotilla "
              f"workflow status {reply.workflow_id}`", file=sys.stderr)  # fmt: skip
    return 0


def load_spec(path: str, tenant: str | None) -> WorkflowSpec:
    label = "stdin" if path == "-" else path
    doc = load_job_file(path)
    if tenant is not None:
        doc["tenant"] = tenant
    try:
        return msgspec.convert(doc, WorkflowSpec)
    except (msgspec.ValidationError, ValueError) as exc:
        raise BadInput(f"invalid workflow {label}: {exc}") from exc


async def submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.path, args.tenant)
    async with ApiClient.from_args(args) as client:
        req = WorkflowSubmitRequest(workflow=spec)
        reply = await client.call("workflow.submit", req, WorkflowSubmitReply)
    if args.json:
        print_json(reply)
    else:
        dup = " (duplicate: already submitted)" if reply.duplicate else ""
        print(f"submitted workflow {reply.workflow_id} ({len(spec.steps)} steps){dup}")
    return 0


async def status(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        ref = WorkflowRef(workflow_id=args.workflow_id, tenant=args.tenant)
        info = await client.call("workflow.get", ref, WorkflowInfo)
    if args.json:
        print_json(info)
        return 0
    print(f"workflow  {info.workflow_id} ({info.tenant})")
    print(f"state     {info.state}")
    print(f"created   {ago(info.created_at)}")
    if info.error:
        print(f"error     {info.error}")
    rows = [
        (s.name, s.state, s.job_state, s.operation, ",".join(s.needs) or None, s.job_id)
        for s in info.steps
    ]
    print(table(["step", "state", "job", "op", "needs", "job id"], rows))
    return 0


async def cancel(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        req = WorkflowCancelRequest(
            workflow_id=args.workflow_id, tenant=args.tenant, reason=args.reason
        )
        reply = await client.call("workflow.cancel", req, AckReply)
    if args.json:
        print_json({"workflow_id": args.workflow_id, "ok": reply.ok, "message": reply.message})
        return 0 if reply.ok else 1
    if not reply.ok:
        raise CliError(f"{args.workflow_id}: {reply.message}")
    print(f"{args.workflow_id}: {reply.message}")
    return 0


async def list_workflows(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise BadInput("--limit must be between 1 and 1000")
    req = WorkflowListRequest(state=args.state, tenant=args.tenant, limit=args.limit)
    async with ApiClient.from_args(args) as client:
        reply = await client.call("workflow.list", req, WorkflowListReply)
    if args.json:
        print_json(reply)
        return 0
    rows = [
        (w.workflow_id, w.tenant, w.state, f"{w.completed}/{w.steps}", ago(w.created_at))
        for w in reply.workflows
    ]
    print(table(["workflow", "tenant", "state", "steps done", "created"], rows))
    return 0
