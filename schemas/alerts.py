"""Alerts as the control plane fires and resolves them on `<prefix>.alerts.<severity>.<rule>`."""

from __future__ import annotations

from typing import Literal

from schemas.common import ShortText, Token, Wire

Severity = Literal["info", "warning", "critical"]
AlertState = Literal["firing", "resolved"]


class Alert(Wire, kw_only=True):
    alert_id: Token
    rule: Token
    severity: Severity
    state: AlertState
    #: What the alert is about: a node id, a pool, a job id, or "fleet".
    subject: ShortText
    summary: ShortText
    value: float | None = None
    threshold: float | None = None
    fired_at: float
    resolved_at: float | None = None
