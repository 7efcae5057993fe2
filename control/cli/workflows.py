"""`flotilla workflow submit|status|cancel|list`: a DAG of jobs as one submission."""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from control.cli.apiclient import ApiClient
from control.cli.flags import add_client_flags
from control.cli.format import ago, print_json, table
from control.cli.jobflags import load_job_file
from control.errors import BadInput, CliError
from schemas.api import AckReply
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
