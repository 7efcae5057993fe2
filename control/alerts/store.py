"""Keep fired and resolved alerts in Postgres, and fan one alert out to several sinks."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from control.alerts.rules import Sink
from schemas.alerts import Alert


def _dt(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def db_sink(pool: asyncpg.Pool) -> Sink:
    async def sink(a: Alert) -> None:
        if a.state == "firing":
            # DO NOTHING also covers another instance already firing the same (rule, subject).
            await pool.execute(
                "INSERT INTO alerts (alert_id, rule, severity, state, subject, summary, value,"
                " threshold, fired_at) VALUES ($1, $2, $3, 'firing', $4, $5, $6, $7, $8)"
                " ON CONFLICT DO NOTHING",
                a.alert_id, a.rule, a.severity, a.subject, a.summary, a.value, a.threshold,
                _dt(a.fired_at),
            )  # fmt: skip
        else:
            await pool.execute(
                "UPDATE alerts SET state = 'resolved', resolved_at = $3, updated_at = now()"
                " WHERE rule = $1 AND subject = $2 AND state = 'firing'",
                a.rule, a.subject, _dt(a.resolved_at),
            )  # fmt: skip

    return sink


def fan_out(*sinks: Sink) -> Sink:
    async def sink(a: Alert) -> None:
        for s in sinks:
            await s(a)

    return sink
