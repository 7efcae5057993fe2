"""A node's question before it runs a redelivered job that never ran on it: has the job of this
very message already ended on another node?

That happens when a node publishes a job's terminal event and dies before its ack: JetStream
hands the message on after `ack_wait`, and without the question the job would run twice. The
node asks on `<prefix>.jobend.<node>`; any control-plane instance answers from its jobs table,
which only the events of an attempt's holder move (control/db/holders.py). An ending counts only
when its attempt was delivered before this one and no other node's event for that attempt was
refused (a contested attempt), so a node cannot make another skip a job. No answer (no control
plane, a timeout) means run it, as before.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.common import Report, Token

Ended = Literal["completed", "failed", "cancelled"]


class JobEndQuery(Report, kw_only=True):
    tenant: Token
    job_id: Token
    #: The message's stream sequence: a job submitted again under the same id is a new message,
    #: and its ending is not the old one's.
    stream_seq: Annotated[int, msgspec.Meta(ge=1)]
    #: This delivery's number: only an attempt JetStream handed out before it can have ended the
    #: job (a lying node's claim on an attempt number nobody was handed does not count).
    delivery: Annotated[int, msgspec.Meta(ge=2)]


class JobEndReply(Report, kw_only=True):
    #: The job's terminal state when the control plane holds this very message's job as ended;
    #: None when it is not, or not known (not yet folded, never seen).
    ended: Ended | None = None
    #: Which node ended it, and in which attempt (for the log).
    node_id: str = ""
    attempt: int = 0
    #: Set instead when the question could not be read.
    error: str = ""
