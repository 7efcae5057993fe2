"""Job commands: submit, watch, status, jobs (and jobs retry), events, cancel."""

from __future__ import annotations

import argparse
import os
import re
import time
from typing import Any

from control import cli_watch, jobflags
from control.apiclient import ApiClient
from control.cli_format import ago, duration, print_json, table
from control.errors import BadInput
from schemas import api

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PAGES = 1000


def client_flags(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    from control.cli import add_nats_flags

    add_nats_flags(p)
    p.add_argument(
        "--api-key", default=os.environ.get("FLOTILLA_API_KEY"), help="env FLOTILLA_API_KEY"
    )
    if json_flag:
        p.add_argument("--json", action="store_true", help="one JSON document on stdout")


def _submit_flags(p: argparse.ArgumentParser) -> None:
    client_flags(p)
    p.add_argument("--job-id", help="default: generated (job-<utc time>-<random>)")
    p.add_argument("--pool", help="pool override (default: follows the job's accel)")
    p.add_argument("--priority", choices=["high", "normal", "low"])
    p.add_argument("--tenant")
    p.add_argument("--upload", action="store_true", help="put local inputs in the object store")
    p.add_argument("--wait", action="store_true", help="block until the job ends (exit 0/1)")
    p.add_argument("--watch", action="store_true", help="as --wait, with the progress display")
    p.set_defaults(handler=submit)


def register(sub: Any) -> None:
    """Add the job commands to the `flotilla` parser (`sub` is its subparsers action)."""
    jobflags.add_submit(sub, _submit_flags)
    for name, handler, text in (
        ("watch", cli_watch.watch, "follow a job's progress until it ends"),
        ("status", status, "one job's state, timings and result"),
        ("events", job_events, "the events a job has produced"),
        ("cancel", cancel, "cancel a queued or running job"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id", metavar="JOB")
        client_flags(p)
        p.set_defaults(handler=handler)
        if name == "cancel":
            p.add_argument("--reason", default="cancelled by operator")
    p = sub.add_parser("jobs", help="list jobs (newest first), or `jobs retry JOB`")
    client_flags(p)
    p.add_argument(
        "--state", choices=sorted(("submitted", "queued", "running", *api.TERMINAL_STATES))
    )
    p.add_argument("--tenant")
    p.add_argument("--node", dest="node_id")
    p.add_argument("--since", help="submitted within, e.g. 30m, 1h, 2d")
    p.add_argument("--limit", type=int, default=50, help="jobs per page (1-1000)")
    p.add_argument("--all", action="store_true", help="follow every page")
    p.add_argument("--cursor", help="continue from a previous page's next_cursor")
    p.set_defaults(handler=list_jobs)
    jsub = p.add_subparsers(dest="jobs_cmd", required=False, metavar="retry")
    r = jsub.add_parser("retry", help="put a dead-lettered job back on the stream")
    r.add_argument("job_id", metavar="JOB")
    client_flags(r)
    r.set_defaults(handler=retry)


async def submit(args: argparse.Namespace) -> int:
    if args.form == "file":
        doc, label = jobflags.load_job_file(args.path), args.path
    else:
        doc, label = jobflags.flag_document(args), "flags"
    spec = jobflags.to_spec(doc, args, "stdin" if label == "-" else label)
    async with ApiClient.from_args(args) as client:
        if args.upload:
            from control.upload import upload_inputs

            spec = await upload_inputs(client.nc, client.subjects, spec)
        reply = await client.call("job.submit", api.SubmitRequest(job=spec), api.SubmitReply)
        if not (args.wait or args.watch):
            if args.json:
                print_json(reply)
            else:
                dup = " (duplicate: already submitted)" if reply.duplicate else ""
                print(f"submitted {reply.job_id} to pool {spec.pool}{dup}", flush=True)
            return 0
        if not args.json:
            print(f"submitted {reply.job_id} to pool {spec.pool}", flush=True)
        display = (
            cli_watch.Display.for_stdout(reply.job_id) if args.watch and not args.json else None
        )
        info = await cli_watch.follow(client, reply.job_id, display, grace_s=10.0)
    if args.json:
        print_json(info)
    else:
        print(cli_watch.outcome_line(info), flush=True)
    return cli_watch.EXIT_BY_STATE.get(info.state, 1)


async def status(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        info = await client.call("job.get", api.JobRef(job_id=args.job_id), api.JobInfo)
    if args.json:
        print_json(info)
        return 0
    progress = "" if info.percent is None else f" ({info.percent:.0f}%)"
    rows: list[tuple[str, object]] = [
        ("job", info.job_id),
        ("state", info.state + progress + ("  [dead-lettered]" if info.dead_lettered else "")),
        ("operation", info.operation),
        ("pool", f"{info.pool} ({info.priority} priority)"),
        ("tenant", info.tenant),
        ("node", info.node_id),
        ("attempts", info.attempts),
        ("submitted", ago(info.submitted_at)),
        ("queue wait", duration(info.queue_wait_s)),
        ("run time", duration(info.run_time_s)),
    ]
    if info.last_error:
        rows.append(("error", info.last_error))
    if info.result is not None:
        res = info.result
        rows.append(("encoder", res.encoder))
        if res.realtime_factor is not None:
            rows.append(("realtime", f"{res.realtime_factor:.2f}x"))
        if res.vmaf is not None:
            rows.append(("vmaf", f"{res.vmaf.mean:.2f}"))
        for out in res.outputs:
            rows.append(("output", f"{out.uri} ({out.size_bytes} bytes, {out.role})"))
    for key, value in rows:
        print(f"{key:<11} {'-' if value is None else value}")
    if info.stderr_tail and info.state == "failed":
        print("stderr tail:\n" + info.stderr_tail.rstrip())
    return 0


def since_ts(text: str, now: float | None = None) -> float:
    match = _SINCE.match(text.strip())
    if match is None:
        raise BadInput(f"--since {text!r}: write a duration like 30m, 1h or 2d")
    return (time.time() if now is None else now) - float(match[1]) * _UNIT_S[match[2]]


async def list_jobs(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise BadInput("--limit must be between 1 and 1000")
    req = api.JobListRequest(
        state=args.state, tenant=args.tenant, node_id=args.node_id, limit=args.limit,
        since=None if args.since is None else since_ts(args.since), cursor=args.cursor,
    )  # fmt: skip
    jobs: list[api.JobInfo] = []
    async with ApiClient.from_args(args) as client:
        for _ in range(MAX_PAGES):
            page = await client.call("job.list", req, api.JobListReply)
            jobs.extend(page.jobs)
            req.cursor = page.next_cursor
            if not args.all or page.next_cursor is None:
                break
    if args.json:
        print_json(api.JobListReply(jobs=jobs, next_cursor=req.cursor))
        return 0
    rows = [
        (
            j.job_id, j.state, j.operation, j.pool, j.node_id,
            None if j.percent is None else f"{j.percent:.0f}%",
            ago(j.submitted_at), duration(j.run_time_s) if j.run_time_s is not None else None,
        )
        for j in jobs
    ]  # fmt: skip
    print(table(["job", "state", "op", "pool", "node", "progress", "submitted", "run"], rows))
    if req.cursor is not None:
        print(f"(more: --all, or --cursor {req.cursor})")
    return 0


async def job_events(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        ref = api.JobRef(job_id=args.job_id)
        await client.call("job.get", ref, api.JobInfo)  # an unknown job is a 404, not no events
        reply = await client.call("job.events", ref, api.JobEventsReply)
    if args.json:
        print_json(reply)
        return 0
    rows = [
        (time.strftime("%H:%M:%S", time.localtime(e.ts)), e.kind, e.node_id, e.attempt, _detail(e))
        for e in reply.events
    ]
    print(table(["time", "kind", "node", "attempt", "detail"], rows))
    return 0


def _detail(e: api.JobEventRecord) -> str:
    body = e.body
    if e.kind == "progress" and body.get("percent") is not None:
        return (
            f"{body['percent']:.0f}%  {body.get('fps') or 0:.1f} fps  {body.get('speed') or 0:.2f}x"
        )
    if e.kind == "output" and isinstance(body.get("output"), dict):
        return str(body["output"].get("uri", ""))[-80:]
    for key in ("reason", "encoder"):
        if body.get(key):
            return str(body[key])[:80]
    if e.kind == "completed":
        return f"wall {duration((body.get('result') or {}).get('wall_seconds'))}"
    return ""


async def cancel(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        info = await client.call("job.get", api.JobRef(job_id=args.job_id), api.JobInfo)
        if info.state in api.TERMINAL_STATES:
            raise BadInput(f"job {args.job_id} already {info.state}")
        req = api.CancelRequest(job_id=args.job_id, reason=args.reason)
        reply = await client.call("job.cancel", req, api.AckReply)
    if args.json:
        print_json(reply)
    else:
        print(f"{args.job_id}: {reply.message or ('cancelled' if reply.ok else 'not cancelled')}")
    return 0 if reply.ok else 1


async def retry(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        reply = await client.call("job.retry", api.JobRef(job_id=args.job_id), api.SubmitReply)
    if args.json:
        print_json(reply)
    else:
        print(f"{reply.job_id} is back on the stream (seq {reply.seq})")
    return 0
