"""The control plane's request/reply API: a nats.micro service on `<prefix>.api.*`.

Every request acts as its key's identity (identity.py). A tenant key sees and acts on its own
tenant's jobs only: another tenant's job answers exactly as an unknown id does (404, same
message), never 403, so a key learns nothing about jobs it may not see. Node commands and key
and tenant administration need an operator key (403 otherwise). node.list stays readable to
tenants, who need pools, labels and capacity to submit, but shows them only their own running
job ids (`running` still counts every tenant's). fleet.summary gives a tenant its own job
counts with the fleet's pool queues and node counts, and leaves out the alerts (they name nodes
and other tenants' jobs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import msgspec
from nats import micro
from nats.aio.client import Client as NATS
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
from nats.micro.request import Request
from nats.micro.service import Service

from common.natsconn import sync_subscriptions
from control.api import admin, jobquery, tenants
from control.api.deadline import (
    DeadlinePolicy,
    Verdict,
    judge,
    live_slots,
    past_deadline,
    queued_ahead,
)
from control.api.failure import ApiFailure
from control.api.fleetfit import rejection
from control.api.identity import KEYLESS_OPERATOR, Identity, identity_for_key
from control.api.jobcancel import delete_queued, mark_cancelled
from control.api.publish import Limits, over_limits, publish_job, record
from control.api.ratelimit import TenantLimiter
from control.api.workflows import WorkflowApi
from control.db import TRANSIENT_ERRORS, is_transient
from control.db.runtimes import learned_for
from control.db.store import as_utc
from control.deadletters.retry import DeadLetterNotFound, retry_dead_letter
from control.fleetread import pool_queue
from control.nodes import Fleet, FleetNode
from control.runtimes import media_seconds, run_estimate, runtime_key
from schemas import api
from schemas.codec import DecodeError, Decoder, encode
from schemas.control_msgs import NodeCommand, NodeCommandReply
from schemas.jobs import JobSpec
from schemas.nodes import Heartbeat
from schemas.subjects import ALL_NODES, Subjects

log = logging.getLogger("flotilla.api")
SUBMIT: Decoder[api.SubmitRequest] = Decoder(api.SubmitRequest, "submit request")
CANCEL: Decoder[api.CancelRequest] = Decoder(api.CancelRequest, "cancel request")
JOB_REF: Decoder[api.JobRef] = Decoder(api.JobRef, "job ref")
LIST_REQ: Decoder[api.JobListRequest] = Decoder(api.JobListRequest, "job list request")
NODE_REF: Decoder[api.NodeRef] = Decoder(api.NodeRef, "node ref")
NODE_WINDOWS: Decoder[api.NodeWindowsRequest] = Decoder(
    api.NodeWindowsRequest, "node windows request"
)
NODE_LIST: Decoder[api.NodeListRequest] = Decoder(api.NodeListRequest, "node list request")
#: Bytes of node records per node.list reply: well under the CLI's 256 KiB reply cap and NATS's
#: 1 MiB payload, whatever a node's record holds (a page has at least one node).
NODE_PAGE_BYTES = 160 << 10
CMD_REPLY: Decoder[NodeCommandReply] = Decoder(NodeCommandReply, "node command reply")


@dataclass(slots=True)
class ApiSettings:
    pools: list[str]
    command_timeout: float = 5.0
    submit_rate: float = 50.0  # per tenant, per second (token bucket)
    submit_burst: int = 100
    require_api_keys: bool = False
    #: Requests handled at once by this instance, over every verb. nats.micro calls a verb's
    #: handler one request at a time, so one slow request (a lock, a slow node) held up every
    #: other of that verb; past the bound a request waits in its subscription's buffer.
    max_in_flight: int = 64
    #: A job whose deadline looks infeasible at submit: `refuse` it (409), or `warn` (admit it
    #: with `deadline_warning` in the reply). A deadline already past is refused either way.
    deadline_policy: DeadlinePolicy = "refuse"


Handler = Callable[[Request, Identity], Awaitable[bytes]]
AdminHandler = Callable[[asyncpg.Pool, bytes], Awaitable[bytes]]


def unavailable(exc: BaseException) -> bool:
    """A broker or database outage (leader election, restart), as opposed to a bug."""
    broker = (
        NatsTimeout, NoRespondersError, NoStreamResponseError, ConnectionClosedError,
        ServiceUnavailableError,
    )  # fmt: skip
    return isinstance(exc, broker) or is_transient(exc)


class ApiService:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        settings: ApiSettings,
        fleet: Fleet,
        db: asyncpg.Pool | None = None,
        clock: Callable[[], float] = time.time,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.nc, self.js, self.subjects, self.s = nc, nc.jetstream(), subjects, settings
        #: Told each answered request's verb and seconds, from taking it to the reply sent.
        self.observe = observe
        self.fleet, self.db = fleet, db
        #: Epoch seconds now: what deadlines are judged against (injectable for tests).
        self.clock = clock
        self.limiter = TenantLimiter(settings.submit_rate, settings.submit_burst)
        self.limits = Limits(settings.submit_rate, settings.submit_burst)
        self._svc: Service | None = None
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._in_flight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._svc = await micro.add_service(
            self.nc, name="flotilla-control", version="0.1.0", description="Flotilla fleet API"
        )
        group = self._svc.add_group(name=f"{self.subjects.prefix}.api")
        # verb -> (handler, needs an operator key)
        routes: dict[str, tuple[Handler, bool]] = {
            "job.submit": (self.submit, False),
            "job.cancel": (self.cancel, False),
            "job.get": (self.job_get, False),
            "job.list": (self.job_list, False),
            "job.events": (self.job_events, False),
            "job.retry": (self.job_retry, False),
            "node.list": (self.node_list, False),
            "node.drain": (self.node_drain, True),
            "node.resume": (self.node_resume, True),
            "node.windows": (self.node_windows, True),
            "fleet.summary": (self.summary, False),
        }
        routes.update(WorkflowApi(self).routes())
        admin_routes: dict[str, AdminHandler] = {
            "key.create": admin.key_create,
            "key.list": admin.key_list,
            "key.rotate": admin.key_rotate,
            "key.revoke": admin.key_revoke,
            "tenant.create": admin.tenant_create,
            "tenant.list": admin.tenant_list,
        }
        for verb, run in admin_routes.items():
            routes[verb] = (self._admin(run), True)
        for subject, (handler, operator_only) in routes.items():
            await group.add_endpoint(
                name=subject.replace(".", "_"),
                subject=subject,
                handler=self._wrap(subject, handler, operator_only),
            )
        await sync_subscriptions(self.nc)  # started means answering, even a request made next

    async def stop(self, grace: float = 10.0) -> None:
        if self._svc is not None:
            await self._svc.stop()  # no new requests; those under way may answer
            self._svc = None
        if self._in_flight:
            _, late = await asyncio.wait(set(self._in_flight), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Only the answer itself can fail here (say the connection closed mid-reply).
            log.warning("%s could not answer: %r", task.get_name(), exc)

    def _wrap(
        self, verb: str, handler: Handler, operator_only: bool
    ) -> Callable[[Request], Awaitable[None]]:
        async def run(req: Request) -> None:
            taken = time.perf_counter()
            await self._slots.acquire()  # backpressure: the subscription waits when all are busy
            try:
                task = asyncio.create_task(answer(req, taken), name=f"api-{verb}")
            except BaseException:
                self._slots.release()
                raise
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

        async def answer(req: Request, taken: float) -> None:
            try:
                await respond(req)
            finally:
                if self.observe is not None:
                    self.observe(verb, time.perf_counter() - taken)

        async def respond(req: Request) -> None:
            who: Identity | None = None
            try:
                who = await self._authenticate(req)
                if operator_only and not who.operator:
                    raise ApiFailure(403, f"{verb} needs an operator key")
                await req.respond(await handler(req, who))
            except (DecodeError, ValueError) as exc:
                await self._error(req, 400, str(exc))
            except ApiFailure as exc:
                if exc.code == 403 and who is not None:  # a valid key reaching past its rights
                    log.warning("api %s refused to key %s: %s", verb, who.key_id, exc)
                await self._error(req, exc.code, str(exc))
            except Exception as exc:  # an endpoint must always answer
                if unavailable(exc):  # not a bug: the caller may retry (a submit is idempotent)
                    log.warning("api %s: a dependency is unavailable: %r", verb, exc)
                    await self._error(req, 503, "the broker or database is unavailable; retry")
                    return
                log.exception("api %s failed", req.subject)
                await self._error(req, 500, f"internal error: {exc}")

        return run

    async def _error(self, req: Request, code: int, message: str) -> None:
        err = api.ApiError(code=code, message=message[:1000])  # type: ignore[arg-type]
        await req.respond_error(str(code), message[:200], data=encode(err))

    async def _authenticate(self, req: Request) -> Identity:
        key = (req.headers or {}).get(tenants.KEY_HEADER)
        if key is None and not self.s.require_api_keys:
            return KEYLESS_OPERATOR  # a dev or demo fleet: one trusted operator
        if self.db is None:
            raise ApiFailure(503, "API keys cannot be checked: this instance has no database")
        who = None if key is None else await identity_for_key(self.db, key)
        if who is None:
            raise ApiFailure(401, f"a valid {tenants.KEY_HEADER} header is required")
        return who

    def _admin(self, run: AdminHandler) -> Handler:
        async def handler(req: Request, who: Identity) -> bytes:
            return await run(self._need_db(), req.data)

        return handler

    def _nodes(self, now: float | None = None) -> list[FleetNode]:
        return self._synced().nodes(now)

    def _synced(self) -> Fleet:
        if not self.fleet.synced:
            raise ApiFailure(503, "this instance has not read the node bucket yet; try again")
        return self.fleet

    def _need_db(self) -> asyncpg.Pool:
        if self.db is None:
            raise ApiFailure(503, "this control-plane instance has no database")
        return self.db

    # -- jobs -----------------------------------------------------------------------------
    async def submit(self, req: Request, who: Identity) -> bytes:
        ask = SUBMIT.decode(req.data)
        job = ask.job
        await self._admit(job.tenant, job.job_id, who)
        if self.subjects.lane(job.pool, job.priority, job.tenant) is None:
            shared = ", ".join(t.tenant or "" for t in self.subjects.lanes(job.pool, job.priority))
            raise ApiFailure(
                409, f"pool {job.pool!r} is shared by weight among {shared}: tenant "
                f"{job.tenant!r} has no share there (topology.shares)",
            )  # fmt: skip
        if rejection(job, self._synced().iter_nodes()) is not None:
            # Refused: name every node's reason, in node order (the same answer each time).
            reason = rejection(job, self._nodes())
            if reason is not None:
                raise ApiFailure(409, reason)
        verdict = await self._deadline(job, ask.duration_hint_s)
        ack = await publish_job(self.js, self.subjects, job)
        if self.db is not None:
            try:
                async with self.db.acquire() as conn:
                    await record(conn, job, ack, None if verdict is None else verdict.run_s)
            except TRANSIENT_ERRORS as exc:  # it is on the stream: ingest records it later
                log.warning("job %s accepted but not recorded yet: %r", job.job_id, exc)
        reply = api.SubmitReply(
            job_id=job.job_id,
            subject=self.subjects.job_stored(job.tenant, job.pool, job.priority, job.job_id)
            if job.deadline is None
            else self.subjects.timed(job.tenant, job.pool, job.priority, job.job_id),
            stream=ack.stream,
            seq=ack.seq,
            duplicate=bool(ack.duplicate),
        )
        if verdict is not None:
            reply.estimated_finish, reply.estimate_runs = verdict.finish, verdict.runs
            reply.estimate_note, reply.deadline_warning = verdict.note, verdict.infeasible
        return submit_reply_bytes(reply)

    async def _deadline(self, job: JobSpec, hint_s: float | None) -> Verdict | None:
        """Judge the job's deadline (None without one): refuse one already past, and an
        infeasible one under the `refuse` policy."""
        due = as_utc(job.deadline)
        if due is None:
            return None
        now, deadline = self.clock(), due.timestamp()
        if (past := past_deadline(deadline, now)) is not None:
            if not await self._recorded(job):
                raise ApiFailure(400, past)
            return Verdict(None, 0, past, past)
        key = runtime_key(job)
        learned = None if self.db is None else await learned_for(self.db, key)
        run = run_estimate(learned, media_seconds(job, hint_s))
        ahead = 0 if run is None else await queued_ahead(self.js, self.subjects, job.pool,
                                                        job.priority)  # fmt: skip
        verdict = judge(deadline, now, run, key, ahead, live_slots(self._nodes(), job.pool))
        refuse = verdict.infeasible is not None and self.s.deadline_policy == "refuse"
        if refuse and not await self._recorded(job):
            raise ApiFailure(409, str(verdict.infeasible))
        return verdict

    async def _recorded(self, job: JobSpec) -> bool:
        """Whether the job was submitted before: a retried submit (say after a 503 or a lost
        reply) is answered as a duplicate, not refused, though its deadline now looks worse."""
        if self.db is None:
            return False
        found = await self.db.fetchval(
            "SELECT true FROM jobs WHERE tenant = $1 AND job_id = $2", job.tenant, job.job_id
        )
        return bool(found)

    async def _admit(self, tenant: str, job_id: str, who: Identity) -> None:
        """May `who` submit this tenant's job now: key, job id, rate and queue limits."""
        if not who.operator and who.tenant != tenant:
            raise ApiFailure(403, f"this key belongs to tenant {who.tenant!r}, not {tenant!r}")
        if self.db is None:
            if not self.limiter.allow(tenant):
                raise ApiFailure(429, f"tenant {tenant!r} is over its submit rate")
            return
        refused = await over_limits(self.db, tenant, self.limits)
        if refused is not None:
            raise ApiFailure(429, refused)

    async def _owner(
        self, job_id: str, asked: str | None, who: Identity, missing: str = ""
    ) -> str | None:
        """Whose job `job_id` is, for this caller. A tenant key sees only its own tenant's: any
        other answers 404 exactly as an unknown id does (`missing` is that message). An operator
        names the tenant, or gets the one tenant that has the id (409 when several do); None
        when nothing is recorded under the id (a job published straight to the stream and not
        ingested yet)."""
        missing = missing or f"no job {job_id!r}"
        if who.scope is not None:
            found = asked in (None, who.scope)
            if not found or await jobquery.get_job(self._need_db(), who.scope, job_id) is None:
                raise ApiFailure(404, missing)
            return who.scope
        if asked is not None:
            return asked
        if self.db is None:
            return None
        tenants_with_id = await jobquery.tenants_of(self.db, job_id)
        if len(tenants_with_id) > 1:
            raise _ambiguous(job_id, tenants_with_id)
        return tenants_with_id[0] if tenants_with_id else None

    async def _known(self, job_id: str, asked: str | None, who: Identity, missing: str = "") -> str:
        """As _owner, for a job that must be recorded: 404 when it is not."""
        tenant = await self._owner(job_id, asked, who, missing)
        if tenant is None:
            raise ApiFailure(404, missing or f"no job {job_id!r}")
        return tenant

    async def cancel(self, req: Request, who: Identity) -> bytes:
        ask = CANCEL.decode(req.data)
        tenant = await self._owner(ask.job_id, ask.tenant, who)
        return encode(await self.cancel_job(tenant, ask.job_id, ask.reason))

    async def _recorded_runner(
        self, live: list[FleetNode], tenant: str | None, job_id: str
    ) -> FleetNode | None:
        """The online node Postgres says runs the job: one that started it since its last
        heartbeat is not listed yet, and a broadcast alone would leave the caller unanswered."""
        if self.db is None or tenant is None:
            return None
        info = await jobquery.get_job(self.db, tenant, job_id)
        if info is None or info.state != "running" or info.node_id is None:
            return None
        return next((n for n in live if n.node_id == info.node_id), None)

    async def cancel_job(self, tenant: str | None, job_id: str, reason: str) -> api.AckReply:
        """Cancel one job: delete it while queued, else ask the node that runs it (and every
        node, for one that picked it up after the bucket was read). job.cancel and
        workflow.cancel both come here."""
        # An offline node's last heartbeat may still list a job that now runs elsewhere.
        live = [n for n in self._nodes() if n.state != "offline"]
        runner = next((n for n in live if runs(n.heartbeat, tenant, job_id)), None)
        if runner is None:
            runner = await self._recorded_runner(live, tenant, job_id)
        js, subjects, pools = self.js, self.subjects, self.s.pools
        if runner is None and await delete_queued(js, subjects, pools, job_id, tenant):
            if self.db is not None and tenant is not None:
                await mark_cancelled(self.db, tenant, job_id, reason)
            return api.AckReply(ok=True, message="cancelled while queued")
        cmd = NodeCommand(verb="cancel", job_id=job_id, tenant=tenant, reason=reason[:200])
        # A broadcast reaches a node that picked the job up after we read the bucket. It names
        # the tenant, so no node cancels another tenant's job with the same id.
        await self.nc.publish(self.subjects.ctl(ALL_NODES, "cancel"), command_bytes(cmd))
        if runner is None:
            return api.AckReply(ok=False, message="not queued; cancel broadcast to all")
        if runner.capabilities.protocol < TENANT_JOB_IDS:  # it would refuse the field
            cmd = msgspec.structs.replace(cmd, tenant=None)
        return await self._command_reply(runner.node_id, cmd)

    async def job_get(self, req: Request, who: Identity) -> bytes:
        # One read of the row, which is also the check _owner makes: the same answers (404 for
        # another tenant's job, 409 for an id several tenants use) in one round trip, not two.
        ref = JOB_REF.decode(req.data)
        tenant = ref.tenant if who.scope is None else who.scope
        if tenant is None and self.db is None:
            raise ApiFailure(404, f"no job {ref.job_id!r}")  # nothing is recorded here
        db = self._need_db()
        if tenant is None:
            found = await jobquery.jobs_with_id(db, ref.job_id)
            if len(found) > 1:
                raise _ambiguous(ref.job_id, [j.tenant for j in found])
            info = found[0] if found else None
        elif ref.tenant in (None, tenant):
            info = await jobquery.get_job(db, tenant, ref.job_id)
        else:
            info = None
        if info is None:
            raise ApiFailure(404, f"no job {ref.job_id!r}")
        return encode(info)

    async def job_list(self, req: Request, who: Identity) -> bytes:
        ask = LIST_REQ.decode(req.data)
        return encode(await jobquery.list_jobs(self._need_db(), ask, scope=who.scope))

    async def job_events(self, req: Request, who: Identity) -> bytes:
        ref = JOB_REF.decode(req.data)
        db = self._need_db()
        # Unknown (or not the caller's): 404, as job.get says, rather than an empty list.
        tenant = await self._known(ref.job_id, ref.tenant, who)
        if await jobquery.get_job(db, tenant, ref.job_id) is None:
            raise ApiFailure(404, f"no job {ref.job_id!r}")
        return encode(await jobquery.job_events(db, tenant, ref.job_id))

    async def job_retry(self, req: Request, who: Identity) -> bytes:
        ref = JOB_REF.decode(req.data)
        tenant = await self._known(ref.job_id, ref.tenant, who, str(DeadLetterNotFound(ref.job_id)))
        try:
            reply = await retry_dead_letter(self.js, self.subjects, tenant, ref.job_id, db=self.db)
        except DeadLetterNotFound as exc:
            raise ApiFailure(404, str(exc)) from exc
        return encode(reply)

    # -- nodes ----------------------------------------------------------------------------
    async def node_list(self, req: Request, who: Identity) -> bytes:
        after = NODE_LIST.decode(req.data or b"{}").after
        infos: list[api.NodeInfo] = []
        size, next_after = 0, None
        for n in self._synced().nodes_after(after):
            if infos and size >= NODE_PAGE_BYTES:
                next_after = infos[-1].node_id
                break
            info = api.NodeInfo(
                node_id=n.node_id,
                state=n.state,
                last_seen=n.heartbeat.ts,
                capabilities=n.capabilities,
                heartbeat=n.heartbeat,
                running=len(n.heartbeat.running_jobs),
            )
            infos.append(info)
            size += len(encode(info))
        if who.scope is not None:  # others' job ids are theirs to know
            await self._scope_running(infos, who.scope)
        return encode(api.NodeListReply(nodes=infos, next_after=next_after))

    async def _scope_running(self, infos: list[api.NodeInfo], tenant: str) -> None:
        """Leave in each node's heartbeat only `tenant`'s running jobs (a page sized before this
        only shrinks)."""
        beats = [(i, i.heartbeat) for i in infos if i.heartbeat is not None]  # each has one
        # Nodes too old to say whose jobs they run: their jobs' owners are read from Postgres.
        running = [j for _, hb in beats if unowned(hb) for j in hb.running_jobs]
        mine = await jobquery.owned(self._need_db(), running, tenant) if running else set()
        for info, hb in beats:
            info.heartbeat = msgspec.structs.replace(
                hb, running_jobs=own_running(hb, tenant, mine), running_tenants=[]
            )

    async def node_drain(self, req: Request, who: Identity) -> bytes:
        ref = NODE_REF.decode(req.data)
        return await self._command(
            ref.node_id, NodeCommand(verb="drain", deadline_s=ref.deadline_s)
        )

    async def node_resume(self, req: Request, who: Identity) -> bytes:
        ref = NODE_REF.decode(req.data)
        return await self._command(ref.node_id, NodeCommand(verb="resume"))

    async def node_windows(self, req: Request, who: Identity) -> bytes:
        ask = NODE_WINDOWS.decode(req.data)  # every rule checked: 400 names what is allowed
        return await self._command(ask.node_id, NodeCommand(verb="windows", windows=ask.windows))

    async def _command(self, node_id: str, cmd: NodeCommand) -> bytes:
        return encode(await self._command_reply(node_id, cmd))

    async def _command_reply(self, node_id: str, cmd: NodeCommand) -> api.AckReply:
        subject = self.subjects.ctl(node_id, cmd.verb)
        try:
            msg = await self.nc.request(subject, command_bytes(cmd), timeout=self.s.command_timeout)
        except (NoRespondersError, NatsTimeout) as exc:
            raise ApiFailure(503, f"node {node_id} did not answer {cmd.verb}: {exc!r}") from exc
        r = CMD_REPLY.decode(msg.data)
        return api.AckReply(ok=r.ok, message=r.message or r.state)

    # -- fleet ----------------------------------------------------------------------------
    async def summary(self, req: Request, who: Identity) -> bytes:
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
        jobs = {} if self.db is None else await jobquery.jobs_by_state(self.db, who.scope)
        # Alerts name nodes and other tenants' jobs: the operator's to see.
        firing = []
        if self.db is not None and who.operator:
            firing = await jobquery.firing_alerts(self.db)
        reply = api.SummaryReply(
            jobs_by_state=jobs, nodes_by_state=by_state, pools=pools, alerts_firing=firing
        )
        return encode(reply)


def unowned(hb: Heartbeat) -> bool:
    """A heartbeat of a node older than `running_tenants`: it names job ids only."""
    return len(hb.running_tenants) != len(hb.running_jobs)


def runs(hb: Heartbeat, tenant: str | None, job_id: str) -> bool:
    """Whether the node runs this job (any tenant's with that id when `tenant` is None, or when
    the node is too old to say)."""
    if tenant is None or unowned(hb):
        return job_id in hb.running_jobs
    return (tenant, job_id) in zip(hb.running_tenants, hb.running_jobs, strict=True)


def own_running(hb: Heartbeat, tenant: str, legacy_owned: set[str]) -> list[str]:
    """The tenant's jobs among those the node runs."""
    if unowned(hb):
        return [j for j in hb.running_jobs if j in legacy_owned]
    return [j for t, j in zip(hb.running_tenants, hb.running_jobs, strict=True) if t == tenant]


#: The protocol revision (schemas.common.PROTOCOL) from which nodes read `NodeCommand.tenant`.
TENANT_JOB_IDS = 2


#: SubmitReply fields added with deadlines.
ESTIMATE_FIELDS = ("estimated_finish", "estimate_runs", "estimate_note", "deadline_warning")


def submit_reply_bytes(reply: api.SubmitReply) -> bytes:
    """The reply as sent: the estimate fields only when set, so a CLI of the release before
    (its decoder refuses unknown fields) still reads the reply to a job without a deadline."""
    fields = msgspec.to_builtins(reply)
    for name in ESTIMATE_FIELDS:
        if not fields.get(name):
            fields.pop(name, None)
    return msgspec.json.encode(fields)


def command_bytes(cmd: NodeCommand) -> bytes:
    """The command as sent: without `tenant` when it names none, which a node older than the
    field would refuse (its decoder forbids unknown fields, even as null)."""
    fields = msgspec.to_builtins(cmd)
    for name in ("tenant", "windows"):  # `windows` is newer still
        if fields.get(name) is None:
            fields.pop(name, None)
    return msgspec.json.encode(fields)


def _ambiguous(job_id: str, tenants_with_id: list[str]) -> ApiFailure:
    named = ", ".join(tenants_with_id)
    return ApiFailure(409, f"job id {job_id!r} is used by tenants {named}: name one (--tenant)")
