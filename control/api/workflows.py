"""The workflow verbs of the API: workflow.submit, .get, .cancel, .list.

Scoped by tenant exactly as the job verbs are: a tenant key submits and sees its own tenant's
workflows only (another tenant's answers 404 as an unknown id does). A submit passes the same
admission as a job submit (the key's tenant, the submit rate and queue limit, whether some node
could run each step); the leader then submits each step through the same publish path, taking
the tenant's submit tokens and respecting its queue limit step by step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

import asyncpg
import msgspec
from nats.aio.client import Client as NATS
from nats.micro.request import Request

from control.api.failure import ApiFailure
from control.api.fleetfit import rejection
from control.api.identity import Identity
from control.nodes import Fleet, FleetNode
from control.workflows import store
from schemas.api import AckReply
from schemas.codec import Decoder, encode
from schemas.subjects import Subjects
from schemas.workflows import (
    WorkflowCancelRequest,
    WorkflowListRequest,
    WorkflowRef,
    WorkflowSubmitReply,
    WorkflowSubmitRequest,
)

Handler = Callable[[Request, Identity], Awaitable[bytes]]


class Host(Protocol):
    """What the verbs use of the API service (control/api/service.py), whose job verbs these
    share their admission, fleet check and cancel path with."""

    nc: NATS
    subjects: Subjects

    def _need_db(self) -> asyncpg.Pool: ...
    def _synced(self) -> Fleet: ...
    def _nodes(self, now: float | None = None) -> list[FleetNode]: ...
    async def _admit(self, tenant: str, job_id: str, who: Identity) -> None: ...
    async def cancel_job(self, tenant: str | None, job_id: str, reason: str) -> AckReply: ...


SUBMIT: Decoder[WorkflowSubmitRequest] = Decoder(WorkflowSubmitRequest, "workflow submit request")
REF: Decoder[WorkflowRef] = Decoder(WorkflowRef, "workflow ref")
CANCEL: Decoder[WorkflowCancelRequest] = Decoder(WorkflowCancelRequest, "workflow cancel request")
LIST: Decoder[WorkflowListRequest] = Decoder(WorkflowListRequest, "workflow list request")


class WorkflowApi:
    def __init__(self, svc: Host) -> None:
        self.svc = svc

    def routes(self) -> dict[str, tuple[Handler, bool]]:
        return {
            "workflow.submit": (self.submit, False),
            "workflow.get": (self.get, False),
            "workflow.cancel": (self.cancel, False),
            "workflow.list": (self.list, False),
        }

    async def submit(self, req: Request, who: Identity) -> bytes:
        spec = SUBMIT.decode(req.data).workflow
        svc = self.svc
        db = svc._need_db()  # the leader advances workflows from Postgres: no database, none
        await svc._admit(spec.tenant, spec.workflow_id, who)
        for name, job in spec.jobs().items():
            if rejection(job, svc._synced().iter_nodes()) is not None:
                reason = rejection(job, svc._nodes())
                if reason is not None:
                    raise ApiFailure(409, f"step {name!r}: {reason}")
        async with db.acquire() as conn, conn.transaction():
            stored = await store.insert(conn, spec)
            if stored is None:  # new: its steps' job ids must be free (else rolled back)
                ids = [j.job_id for j in spec.jobs().values()]
                taken = await store.taken_job_ids(conn, spec.tenant, ids)
                if taken:
                    raise ApiFailure(409, f"job id(s) {', '.join(taken)} already exist: a "
                                     "workflow's step jobs are <workflow_id>--<step>")  # fmt: skip
        duplicate = stored is not None
        if stored is not None and msgspec.json.decode(stored) != msgspec.to_builtins(spec):
            raise ApiFailure(
                409, f"workflow id {spec.workflow_id!r} is already used by another workflow"
            )
        await svc.nc.publish(svc.subjects.workflow_kick, b"")
        reply = WorkflowSubmitReply(
            workflow_id=spec.workflow_id, tenant=spec.tenant, duplicate=duplicate
        )
        return encode(reply)

    async def _tenant(self, workflow_id: str, asked: str | None, who: Identity) -> str:
        """Whose workflow this is for the caller; 404 as for an unknown id otherwise."""
        missing = f"no workflow {workflow_id!r}"
        db = self.svc._need_db()
        if who.scope is not None:
            mine = asked in (None, who.scope)
            if not mine or await store.get(db, who.scope, workflow_id) is None:
                raise ApiFailure(404, missing)
            return who.scope
        if asked is not None:
            return asked
        found = await store.tenants_of(db, workflow_id)
        if len(found) > 1:
            named = ", ".join(found)
            raise ApiFailure(
                409, f"workflow id {workflow_id!r} is used by tenants {named}: name one (--tenant)"
            )
        if not found:
            raise ApiFailure(404, missing)
        return found[0]

    async def get(self, req: Request, who: Identity) -> bytes:
        ref = REF.decode(req.data)
        tenant = await self._tenant(ref.workflow_id, ref.tenant, who)
        info = await store.get(self.svc._need_db(), tenant, ref.workflow_id)
        if info is None:
            raise ApiFailure(404, f"no workflow {ref.workflow_id!r}")
        return encode(info)

    async def cancel(self, req: Request, who: Identity) -> bytes:
        ask = CANCEL.decode(req.data)
        tenant = await self._tenant(ask.workflow_id, ask.tenant, who)
        db = self.svc._need_db()
        async with db.acquire() as conn, conn.transaction():
            running = await store.cancel(conn, tenant, ask.workflow_id, ask.reason)
        if running is None:
            info = await store.get(db, tenant, ask.workflow_id)
            state = "gone" if info is None else info.state
            raise ApiFailure(409, f"workflow {ask.workflow_id!r} has already ended ({state})")
        problems = []
        for job_id in running:
            try:
                await self.svc.cancel_job(tenant, job_id, ask.reason)
            except ApiFailure as exc:  # the node did not answer; its broadcast still went out
                problems.append(f"{job_id}: {exc}")
        message = f"cancelled; {len(running)} submitted step(s) asked to stop"
        if problems:
            message += "; " + "; ".join(problems)
        return encode(AckReply(ok=not problems, message=message))

    async def list(self, req: Request, who: Identity) -> bytes:
        ask = LIST.decode(req.data or b"{}")
        return encode(await store.list_workflows(self.svc._need_db(), ask, who.scope))
