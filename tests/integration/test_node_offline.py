"""A node whose heartbeats stop, end to end: real nats-server, the real control plane.

The node bucket's TTL equals `node_offline_after` here (as with the defaults, 30 s each), so the
node's entry expires about when its last heartbeat becomes too old. The alert must fire by the
`hysteresis`-th evaluation after the heartbeat aged out (node_offline_after + 2 alert intervals
with the default hysteresis of 2), stay firing after the entry is gone, and resolve when the node
comes back. Evaluations are counted rather than timed: each is one alert interval apart.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from control.alerts.rules import AlertEngine, Snapshot
from control.config import AlertThresholds
from control.service import ControlPlane
from control.topology import TopologySettings
from schemas.alerts import Alert
from schemas.registry import ALERT_DECODER
from schemas.subjects import Subjects
from tests.support.controlplane import control_config
from tests.support.ingest import wait_until
from tests.support.noderecords import node_record, put_node

OFFLINE_AFTER = 2.0
INTERVAL = 0.5
HYSTERESIS = 2
log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    at: float
    #: n1's state in the snapshot; None when the snapshot did not list it.
    state: str | None
    changed: list[tuple[str, str]] = field(default_factory=list)


def record(engine: AlertEngine, into: list[Evaluation]) -> None:
    """Note every evaluation the leader makes: n1's state and what fired or resolved."""
    evaluate = engine.evaluate

    async def recording(snap: Snapshot, now: float | None = None) -> list[Alert]:
        changed = await evaluate(snap, now)
        if engine.active:
            state = next((n.state for n in snap.nodes if n.node_id == "n1"), None)
            into.append(Evaluation(time.time(), state, [(a.rule, a.state) for a in changed]))
        return changed

    engine.evaluate = recording  # type: ignore[method-assign]


def changes_of(evals: list[Evaluation], rule: str) -> list[tuple[int, str]]:
    return [(i, state) for i, e in enumerate(evals) for r, state in e.changed if r == rule]


async def test_a_silent_node_fires_node_offline_in_time_and_resolves(
    nc: NATS, nats_url: str, prefix: str, database_url: str
) -> None:
    cfg = control_config(
        nats_url, prefix, database_url, alert_interval=INTERVAL,
        topology=TopologySettings(pools=["cpu"], node_ttl=OFFLINE_AFTER),
        alerts=AlertThresholds(node_offline_after=OFFLINE_AFTER, hysteresis=HYSTERESIS),
    )  # fmt: skip
    published: list[Alert] = []

    async def on_alert(msg: Msg) -> None:
        alert = ALERT_DECODER.decode(msg.data)
        if alert.rule == "node_offline":
            published.append(alert)

    sub = await nc.subscribe(f"{prefix}.alerts.>", cb=on_alert)
    plane = ControlPlane(cfg)
    await plane.start()
    try:
        assert plane.singletons is not None and plane.nodes is not None
        evals: list[Evaluation] = []
        record(plane.singletons.engine, evals)
        await wait_until(lambda: _true(plane.singletons is not None and bool(evals)), "leading")

        # One heartbeat, then silence: the daemon died without deleting its entry.
        js, subjects = nc.jetstream(), Subjects(prefix)
        rec = node_record("n1")
        await put_node(js, subjects, rec, seen_by=plane.nodes)
        await wait_until(lambda: _true(bool(published)), "node_offline to fire")
        # Published during the evaluation; it is recorded once the evaluation returns.
        await wait_until(lambda: _true(changes_of(evals, "node_offline")), "the evaluation")
        fired = published[0]
        assert (fired.state, fired.subject, fired.severity) == ("firing", "n1", "warning")

        # Fired at the HYSTERESIS-th evaluation that saw n1 offline, having seen it online
        # until its heartbeat was older than node_offline_after: no evaluation lost the node.
        # From the first evaluation that listed n1 on, it must never be missing (None).
        seen = evals[next(i for i, e in enumerate(evals) if e.state is not None) :]
        first_off = next(i for i, e in enumerate(seen) if e.state == "offline")
        assert {e.state for e in seen[:first_off]} <= {"online"}
        assert changes_of(seen, "node_offline") == [(first_off + HYSTERESIS - 1, "firing")]
        assert all(e.state == "offline" for e in seen[first_off : first_off + HYSTERESIS])
        log.info(
            "node_offline fired %.2fs after the last heartbeat (bound %.2fs)",
            fired.fired_at - rec.heartbeat.ts, OFFLINE_AFTER + HYSTERESIS * INTERVAL,
        )  # fmt: skip

        # The bucket's TTL removes the entry: the node stays listed offline, the alert firing.
        await wait_until(lambda: _true(plane.nodes is not None and plane.nodes.stats.expiries > 0),
                         "the entry to expire")  # fmt: skip
        after = len(evals)
        await wait_until(lambda: _true(len(evals) >= after + HYSTERESIS + 1), "more evaluations")
        assert all(e.state == "offline" for e in evals[after:])
        assert [a.state for a in published] == ["firing"]

        # It comes back: resolved at the HYSTERESIS-th evaluation that saw it online.
        back = len(evals)
        await put_node(js, subjects, node_record("n1"), seen_by=plane.nodes)
        await wait_until(lambda: _true(len(published) == 2), "node_offline to resolve")
        await wait_until(lambda: _true(len(changes_of(evals, "node_offline")) == 2), "its record")
        assert (published[1].state, published[1].alert_id) == ("resolved", fired.alert_id)
        tail = evals[back:]
        first_on = next(i for i, e in enumerate(tail) if e.state == "online")
        assert changes_of(tail, "node_offline") == [(first_on + HYSTERESIS - 1, "resolved")]
    finally:
        await sub.unsubscribe()
        await plane.stop()


async def _true(value: Any) -> bool:
    return bool(value)
