"""Requests to one node (or all nodes) on `<prefix>.ctl.<node>.<verb>`, and the node's reply."""

from __future__ import annotations

from typing import Literal

from schemas.common import Report, ShortText, Token

CtlVerb = Literal["drain", "resume", "cancel", "pause", "unpause", "status"]


class NodeCommand(Report, kw_only=True):
    verb: CtlVerb
    job_id: Token | None = None
    #: With job_id: the job's tenant. None (control planes older than this field) matches the
    #: job id under any tenant.
    tenant: Token | None = None
    reason: ShortText = ""
    #: Drain only: seconds running jobs may take before they are stopped and handed back.
    deadline_s: float | None = None


class NodeCommandReply(Report, kw_only=True):
    ok: bool
    node_id: str
    message: ShortText = ""
    running_jobs: list[str] = []
    state: str = ""
