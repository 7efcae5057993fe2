"""The control plane's request/reply API: a nats.micro service on `<prefix>.api.*`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from nats import micro
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.micro.request import Request
from nats.micro.service import Service

from control.api import jobquery, tenants
from control.api.fleetfit import rejection
from control.api.jobcancel import delete_queued, mark_cancelled
from control.api.ratelimit import TenantLimiter
from control.db import TRANSIENT_ERRORS
from control.db.store import record_submission
from control.deadletters.retry import DeadLetterNotFound, retry_dead_letter
from control.fleetread import pool_queue
from control.nodes import Fleet, FleetNode
from schemas import api
from schemas.codec import DecodeError, Decoder, encode
from schemas.control_msgs import NodeCommand, NodeCommandReply
from schemas.subjects import ALL_NODES, Subjects

log = logging.getLogger("flotilla.api")
SUBMIT: Decoder[api.SubmitRequest] = Decoder(api.SubmitRequest, "submit request")
CANCEL: Decoder[api.CancelRequest] = Decoder(api.CancelRequest, "cancel request")
JOB_REF: Decoder[api.JobRef] = Decoder(api.JobRef, "job ref")
LIST_REQ: Decoder[api.JobListRequest] = Decoder(api.JobListRequest, "job list request")
NODE_REF: Decoder[api.NodeRef] = Decoder(api.NodeRef, "node ref")
CMD_REPLY: Decoder[NodeCommandReply] = Decoder(NodeCommandReply, "node command reply")


class ApiFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(slots=True)
class ApiSettings:
    pools: list[str]
    command_timeout: float = 5.0
    submit_rate: float = 50.0  # per tenant, per second (token bucket)
    submit_burst: int = 100
    require_api_keys: bool = False


Handler = Callable[[Request], Awaitable[bytes]]


class ApiService:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        settings: ApiSettings,
        fleet: Fleet,
        db: asyncpg.Pool | None = None,
    ) -> None:
        self.nc, self.js, self.subjects, self.s = nc, nc.jetstream(), subjects, settings
        self.fleet, self.db = fleet, db
        self.limiter = TenantLimiter(settings.submit_rate, settings.submit_burst)
        self._svc: Service | None = None

    async def start(self) -> None:
        self._svc = await micro.add_service(
            self.nc, name="flotilla-control", version="0.1.0", description="Flotilla fleet API"
        )
        group = self._svc.add_group(name=f"{self.subjects.prefix}.api")
        routes: dict[str, Handler] = {
            "job.submit": self.submit,
            "job.cancel": self.cancel,
            "job.get": self.job_get,
            "job.list": self.job_list,
            "job.events": self.job_events,
            "job.retry": self.job_retry,
            "node.list": self.node_list,
            "node.drain": self.node_drain,
            "node.resume": self.node_resume,
            "fleet.summary": self.summary,
        }
        for subject, handler in routes.items():
            await group.add_endpoint(
                name=subject.replace(".", "_"), subject=subject, handler=self._wrap(handler)
            )

    async def stop(self) -> None:
        if self._svc is not None:
            await self._svc.stop()
            self._svc = None

    def _wrap(self, handler: Handler) -> Callable[[Request], Awaitable[None]]:
        async def run(req: Request) -> None:
            try:
                if handler != self.submit:  # submit authenticates itself: it needs the tenant
                    await self._authenticate(req)
                await req.respond(await handler(req))
            except (DecodeError, ValueError) as exc:
                await self._error(req, 400, str(exc))
            except ApiFailure as exc:
                await self._error(req, exc.code, str(exc))
            except Exception as exc:  # an endpoint must always answer
                log.exception("api %s failed", req.subject)
                await self._error(req, 500, f"internal error: {exc}")

        return run

    async def _error(self, req: Request, code: int, message: str) -> None:
        err = api.ApiError(code=code, message=message[:1000])  # type: ignore[arg-type]
        await req.respond_error(str(code), message[:200], data=encode(err))

    async def _authenticate(self, req: Request) -> tenants.Tenant | None:
        key = (req.headers or {}).get(tenants.KEY_HEADER)
        if key is None and not self.s.require_api_keys:
            return None
        if self.db is None:
            raise ApiFailure(503, "API keys cannot be checked: this instance has no database")
        tenant = None if key is None else await tenants.tenant_for_key(self.db, key)
        if tenant is None:
            raise ApiFailure(401, f"a valid {tenants.KEY_HEADER} header is required")
        return tenant

    def _nodes(self, now: float | None = None) -> list[FleetNode]:
        if not self.fleet.synced:
            raise ApiFailure(503, "this instance has not read the node bucket yet; try again")
        return self.fleet.nodes(now)

    def _need_db(self) -> asyncpg.Pool:
        if self.db is None:
            raise ApiFailure(503, "this control-plane instance has no database")
        return self.db

    # -- jobs -----------------------------------------------------------------------------
    async def submit(self, req: Request) -> bytes:
        job = SUBMIT.decode(req.data).job
        tenant = await self._authenticate(req)
        if tenant is not None and tenant.tenant != job.tenant:
            raise ApiFailure(
                403, f"this key belongs to tenant {tenant.tenant!r}, not {job.tenant!r}"
            )
        rate, burst = (None, None) if tenant is None else (tenant.submit_rate, tenant.submit_burst)
        if not self.limiter.allow(job.tenant, rate=rate, burst=burst):
            raise ApiFailure(429, f"tenant {job.tenant!r} is over its submit rate")
        if tenant is not None and self.db is not None:
            queued = await tenants.queued_count(self.db, tenant.tenant)
            if queued >= tenant.max_queued:
                raise ApiFailure(429, f"tenant {job.tenant!r} has {tenant.max_queued} jobs queued")
        reason = rejection(job, self._nodes())
        if reason is not None:
            raise ApiFailure(409, reason)
        subject = self.subjects.submit(job.tenant, job.pool, job.priority, job.job_id)
        ack = await self.js.publish(
            subject, encode(job), headers={"Nats-Msg-Id": job.job_id},
            stream=self.subjects.jobs_stream,
        )  # fmt: skip
        if self.db is not None:
            try:
                async with self.db.acquire() as conn:
                    now = datetime.now(UTC)
                    await record_submission(conn, job, submitted_at=now, stream_seq=ack.seq)
            except TRANSIENT_ERRORS as exc:  # it is on the stream: ingest records it later
                log.warning("job %s accepted but not recorded yet: %r", job.job_id, exc)
        reply = api.SubmitReply(
            job_id=job.job_id,
            subject=self.subjects.job_stored(job.tenant, job.pool, job.priority, job.job_id),
            stream=ack.stream,
            seq=ack.seq,
            duplicate=bool(ack.duplicate),
        )
        return encode(reply)

    async def cancel(self, req: Request) -> bytes:
        ask = CANCEL.decode(req.data)
        # An offline node's last heartbeat may still list a job that now runs elsewhere.
        live = (n for n in self._nodes() if n.state != "offline")
        runner = next((n for n in live if ask.job_id in n.heartbeat.running_jobs), None)
        if runner is None and await delete_queued(self.js, self.subjects, self.s.pools, ask.job_id):
            if self.db is not None:
                await mark_cancelled(self.db, ask.job_id, ask.reason)
            return encode(api.AckReply(ok=True, message="cancelled while queued"))
        cmd = NodeCommand(verb="cancel", job_id=ask.job_id, reason=ask.reason[:200])
        # A broadcast reaches a node that picked the job up after we read the bucket.
        await self.nc.publish(self.subjects.ctl(ALL_NODES, "cancel"), encode(cmd))
        if runner is None:
            return encode(api.AckReply(ok=False, message="not queued; cancel broadcast to all"))
        return await self._command(runner.node_id, cmd)

    async def job_get(self, req: Request) -> bytes:
        ref = JOB_REF.decode(req.data)
        info = await jobquery.get_job(self._need_db(), ref.job_id)
        if info is None:
            raise ApiFailure(404, f"no job {ref.job_id!r}")
        return encode(info)

    async def job_list(self, req: Request) -> bytes:
        return encode(await jobquery.list_jobs(self._need_db(), LIST_REQ.decode(req.data)))

    async def job_events(self, req: Request) -> bytes:
        ref = JOB_REF.decode(req.data)
        return encode(await jobquery.job_events(self._need_db(), ref.job_id))

    async def job_retry(self, req: Request) -> bytes:
        ref = JOB_REF.decode(req.data)
        try:
            reply = await retry_dead_letter(self.js, self.subjects, ref.job_id, db=self.db)
        except DeadLetterNotFound as exc:
            raise ApiFailure(404, str(exc)) from exc
        return encode(reply)

    # -- nodes ----------------------------------------------------------------------------
    async def node_list(self, req: Request) -> bytes:
        infos = [
            api.NodeInfo(
                node_id=n.node_id,
                state=n.state,
                last_seen=n.heartbeat.ts,
                capabilities=n.capabilities,
                heartbeat=n.heartbeat,
            )
            for n in self._nodes()
        ]
        return encode(api.NodeListReply(nodes=infos))

    async def node_drain(self, req: Request) -> bytes:
        ref = NODE_REF.decode(req.data)
        return await self._command(
            ref.node_id, NodeCommand(verb="drain", deadline_s=ref.deadline_s)
        )

    async def node_resume(self, req: Request) -> bytes:
        ref = NODE_REF.decode(req.data)
        return await self._command(ref.node_id, NodeCommand(verb="resume"))

    async def _command(self, node_id: str, cmd: NodeCommand) -> bytes:
        subject = self.subjects.ctl(node_id, cmd.verb)
        try:
            msg = await self.nc.request(subject, encode(cmd), timeout=self.s.command_timeout)
        except (NoRespondersError, NatsTimeout) as exc:
            raise ApiFailure(503, f"node {node_id} did not answer {cmd.verb}: {exc!r}") from exc
        r = CMD_REPLY.decode(msg.data)
        return encode(api.AckReply(ok=r.ok, message=r.message or r.state))

    # -- fleet ----------------------------------------------------------------------------
    async def summary(self, req: Request) -> bytes:
        now = time.time()
        nodes = self._nodes(now)
        by_state: dict[str, int] = {}
        for n in nodes:
            by_state[n.state] = by_state.get(n.state, 0) + 1
        pools = []
        for pool in self.s.pools:
            q = await pool_queue(self.js, self.subjects, pool, now)
            online = sum(1 for n in nodes if n.state == "online" and pool in n.capabilities.pools)
            pools.append(
                api.PoolSummary(
                    pool=pool, queued=q.queued, oldest_wait_s=q.oldest_wait_s, nodes_online=online
                )
            )
        jobs = {} if self.db is None else await jobquery.jobs_by_state(self.db)
        firing = [] if self.db is None else await jobquery.firing_alerts(self.db)
        reply = api.SummaryReply(
            jobs_by_state=jobs, nodes_by_state=by_state, pools=pools, alerts_firing=firing
        )
        return encode(reply)
