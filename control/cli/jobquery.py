"""Job queries and actions: status, jobs (paged), events, cancel, jobs retry."""

from __future__ import annotations

import argparse
import re
import time

from control.cli.apiclient import ApiClient
from control.cli.format import ago, duration, print_json, table
from control.errors import BadInput, CliError
from schemas import api
from schemas.results import JobResult, LoudnessReport

_SINCE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PAGES = 1000


async def status(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        info = await client.call(
            "job.get", api.JobRef(job_id=args.job_id, tenant=args.tenant), api.JobInfo
        )
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
        ("input", info.input),
        ("node", info.node_id),
        ("attempts", info.attempts),
        ("submitted", ago(info.submitted_at)),
        ("queue wait", duration(info.queue_wait_s)),
        ("run time", duration(info.run_time_s)),
    ]
    if info.last_error:
        rows.append(("error", info.last_error))
    if info.result is None and info.output:
        rows.append(("output", info.output))
    if info.result is not None:
        rows += result_rows(info.result)
    for key, value in rows:
        print(f"{key:<11} {'-' if value is None else value}")
    if info.stderr_tail and info.state == "failed":
        print("stderr tail:\n" + info.stderr_tail.rstrip())
    return 0


def result_rows(res: JobResult) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [("encoder", res.encoder)]
    if res.realtime_factor is not None:
        rows.append(("realtime", f"{res.realtime_factor:.2f}x"))
    if res.vmaf is not None:
        rows.append(("vmaf", f"{res.vmaf.mean:.2f}"))
    rows += [("loudness", loudness_text(r)) for r in res.loudness]
    for out in res.outputs:
        rows.append(("output", f"{out.uri} ({out.size_bytes} bytes, {out.role})"))
    return rows


def loudness_text(r: LoudnessReport) -> str:
    """`track 0: -56.8 -> -23.0 LUFS, true peak -52.5 -> -19.7 dBTP, LRA 0.1 -> 0.0 LU (linear)`."""

    def pair(before: float | None, after: float | None) -> str:
        return " -> ".join("silent" if v is None else f"{v:.1f}" for v in (before, after))

    text = (f"track {r.track}: {pair(r.input_i, r.output_i)} LUFS, true peak "
            f"{pair(r.input_tp, r.output_tp)} dBTP, "
            f"LRA {pair(r.input_lra, r.output_lra)} LU")  # fmt: skip
    return f"{text} ({r.mode})"


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
        ref = api.JobRef(job_id=args.job_id, tenant=args.tenant)
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
    if e.kind == "webhook":  # the control plane's own rows: outcome of one callback attempt
        outcome = "delivered" if body.get("delivered") else str(body.get("error") or "failed")
        return outcome + (" (final)" if body.get("final") and not body.get("delivered") else "")
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
        info = await client.call(
            "job.get", api.JobRef(job_id=args.job_id, tenant=args.tenant), api.JobInfo
        )
        if info.state in api.TERMINAL_STATES:
            raise BadInput(f"job {args.job_id} already {info.state}")
        req = api.CancelRequest(job_id=args.job_id, tenant=args.tenant, reason=args.reason)
        reply = await client.call("job.cancel", req, api.AckReply)
    outcome, line = cancel_outcome(info, reply)
    if args.json:
        print_json(
            {"job_id": info.job_id, "tenant": info.tenant, "ok": reply.ok, "outcome": outcome,
             "node_id": info.node_id if outcome == "sent" else None, "message": reply.message}
        )  # fmt: skip
        return 0 if reply.ok else 1
    if reply.ok:
        print(f"{info.job_id}: {line}", flush=True)
    else:
        raise CliError(f"{info.job_id}: {line}")
    return 0


#: The control plane's answer when the job was still in the stream (control/api/service.py).
QUEUED_MESSAGE = "cancelled while queued"


def cancel_outcome(info: api.JobInfo, reply: api.AckReply) -> tuple[str, str]:
    """(`queued` | `sent` | `not_found`, what happened in words) for a cancel's answer.

    The API answers `cancelled while queued` when it removed the job from the stream; else it
    relays the running node's answer, or says it found the job neither queued nor running and
    broadcast the cancel to every node."""
    message = reply.message or ""
    if reply.ok and message == QUEUED_MESSAGE:
        return "queued", QUEUED_MESSAGE
    if reply.ok:
        node = info.node_id or "the node running it"
        return "sent", f"cancel sent to {node}; it stops ffmpeg and reports the job cancelled"
    if message.startswith("not queued"):
        return "not_found", (
            f"neither queued nor running on a node the control plane sees ({info.state}); "
            "the cancel was broadcast to every node"
        )
    return "refused", f"cancel refused: {message or 'no reason given'}"


async def retry(args: argparse.Namespace) -> int:
    async with ApiClient.from_args(args) as client:
        reply = await client.call(
            "job.retry", api.JobRef(job_id=args.job_id, tenant=args.tenant), api.SubmitReply
        )
    if args.json:
        print_json(reply)
    else:
        print(f"{reply.job_id} is back on the stream (seq {reply.seq})")
    return 0
