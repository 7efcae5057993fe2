"""Job commands: submit (registered here with the query commands of cli_jobquery and watch)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from control.cli import jobflags
from control.cli import watch as cli_watch
from control.cli.apiclient import ApiClient
from control.cli.flags import add_client_flags as client_flags
from control.cli.format import print_json, when
from control.cli.jobquery import cancel, job_events, list_jobs, retry, status
from control.errors import CliError, Unreachable
from schemas import api


def _submit_flags(p: argparse.ArgumentParser) -> None:
    client_flags(p)
    p.add_argument("--job-id", help="default: generated (job-<utc time>-<random>)")
    p.add_argument("--pool", help="pool override (default: follows the job's accel)")
    p.add_argument("--priority", choices=["high", "normal", "low"])
    p.add_argument("--tenant")
    p.add_argument(
        "--deadline",
        metavar="WHEN",
        help="finish by: an ISO 8601 time (UTC without an offset) or a duration from now (2h)",
    )
    p.add_argument(
        "--duration-hint", type=float, metavar="SECONDS",
        help="media seconds the job processes, for the deadline estimate",
    )  # fmt: skip
    p.add_argument("--upload", action="store_true", help="put local inputs in the object store")
    p.add_argument("--wait", action="store_true", help="block until the job ends (exit 0/1)")
    p.add_argument("--watch", action="store_true", help="as --wait, with the progress display")
    p.set_defaults(handler=submit)


def _tenant_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tenant",
        help="the job's tenant (an operator key names it when two tenants use the job id)",
    )


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
        _tenant_flag(p)
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
    _tenant_flag(r)
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
            from control.cli.upload import upload_inputs

            spec = await upload_inputs(client.nc, client.subjects, spec)
        try:
            ask = api.SubmitRequest(job=spec, duration_hint_s=args.duration_hint)
            reply = await client.call("job.submit", ask, api.SubmitReply)
        except CliError as exc:
            # Refused: its uploads would be orphans. Unreachable: it may have been accepted.
            if args.upload and not isinstance(exc, Unreachable):
                from control.cli.upload import discard_uploads

                await discard_uploads(client.nc, client.subjects, spec)
            raise
        if not (args.wait or args.watch):
            if args.json:
                print_json(reply)
            else:
                dup = " (duplicate: already submitted)" if reply.duplicate else ""
                print(f"submitted {reply.job_id} to pool {spec.pool}{dup}", flush=True)
                print_estimate(reply)
            return 0
        if not args.json:
            print(f"submitted {reply.job_id} to pool {spec.pool}", flush=True)
            print_estimate(reply)
        display = (
            cli_watch.Display.for_stdout(reply.job_id) if args.watch and not args.json else None
        )
        info = await cli_watch.follow(
            client, reply.job_id, display, grace_s=10.0, tenant=spec.tenant
        )
    return cli_watch.report(info, args.json)


def print_estimate(reply: api.SubmitReply) -> None:
    """The deadline estimate of the reply, if any, and its warning on stderr."""
    if reply.estimated_finish is not None:
        print(f"estimated finish {when(reply.estimated_finish)} ({reply.estimate_note})")
    elif reply.estimate_note:
        print(reply.estimate_note)
    if reply.deadline_warning:
        print(f"flotilla: warning: {reply.deadline_warning}", file=sys.stderr, flush=True)
