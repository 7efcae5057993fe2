"""Requests to one node (or all nodes) on `<prefix>.ctl.<node>.<verb>`, and the node's reply."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.common import Report, ShortText, Token
from schemas.windows import MAX_WINDOWS, WindowRule

CtlVerb = Literal["drain", "resume", "cancel", "pause", "unpause", "status", "windows"]


class NodeCommand(Report, kw_only=True):
    verb: CtlVerb
    job_id: Token | None = None
    #: With job_id: the job's tenant. None (control planes older than this field) matches the
    #: job id under any tenant.
    tenant: Token | None = None
    reason: ShortText = ""
    #: Drain only: seconds running jobs may take before they are stopped and handed back.
    deadline_s: float | None = None
    #: `windows` only: the processing windows to keep in force ([]: none); None (or absent):
    #: back to the node's config file's.
    windows: Annotated[list[WindowRule], msgspec.Meta(max_length=MAX_WINDOWS)] | None = None


class NodeCommandReply(Report, kw_only=True):
    ok: bool
    node_id: str
    message: ShortText = ""
    running_jobs: list[str] = []
    state: str = ""
