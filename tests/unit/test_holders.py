"""The pure rules of who holds a job's attempt (control/db/holders.py), and how a rejection is
exported: the counter and the Prometheus rule that reads it."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml
from prometheus_client import generate_latest

from control.db.holders import (
    NOT_HOLDER,
    Rejection,
    checked,
    current_run,
    first_claims,
    rejections,
)
from control.db.incoming import Incoming
from control.fold import CONTROL_NODE, at
from control.metrics import Metrics
from schemas.codec import encode
from schemas.events import Event, NodeStateChanged
from tests.support.ingest import accepted, completed, eid, started

RULES = Path(__file__).resolve().parents[2] / "control" / "prometheus" / "flotilla-rules.yml"


def item(event: Event, seq: int | None = 1) -> Incoming:
    return Incoming(event, encode(event).decode(), seq, "p.events.x.y")


def test_what_is_checked() -> None:
    assert checked(item(accepted("j", "n1")))
    assert not checked(item(NodeStateChanged(event_id=eid(), node_id="n1", ts=1.0, state="online")))
    # The control plane's own event (a dead letter's failure) is not read from the stream…
    assert not checked(item(completed("j", CONTROL_NODE), seq=None))
    # …while a node that calls itself `control` on the stream is a node like any other.
    assert checked(item(completed("j", CONTROL_NODE), seq=7))


def test_a_dead_runs_echoes_are_left_out() -> None:
    t = 1000.0
    old, new, other = (
        item(started("j", "n1", ts=t)), item(started("j", "n2", ts=t + 1)), item(started("k"))
    )  # fmt: skip
    cut = {("acme", "j"): at(t)}
    assert current_run([old, new, other], cut) == [new, other]
    assert current_run([old], {("acme", "j"): at(t) - timedelta(seconds=1)}) == [old]
    # Another tenant's job with the same id has runs of its own.
    assert current_run([item(started("j", "n1", ts=t, tenant="other"))], cut) != []


def test_the_first_event_in_stream_order_claims_each_attempt() -> None:
    a1 = item(accepted("j", "n1"), seq=10)
    s1 = item(started("j", "n1"), seq=9)  # the holder's own events, out of order
    forged = item(completed("j", "n2"), seq=11)
    second = item(accepted("j", "n3", attempt=2), seq=3)
    k = item(accepted("k", "n2"), seq=1)
    theirs = item(accepted("j", "n4", tenant="other"), seq=12)  # another tenant's job "j"
    claims = first_claims([forged, a1, second, k, s1, theirs])
    assert claims == [s1, second, k, theirs]  # one per (tenant, job, attempt), in key order


def test_rejections_name_the_holder() -> None:
    mine, theirs = item(completed("j", "n1")), item(completed("j", "n2"))
    unclaimed = item(completed("j", "n3", attempt=5))
    other_tenant = item(completed("j", "n2", tenant="other"))  # its own job: not held by n1
    out = rejections([mine, theirs, unclaimed, other_tenant], {("acme", "j", 1): "n1"})
    assert out == [Rejection(theirs, "n1")]
    assert out[0].reason == NOT_HOLDER
    assert "node n2" in out[0].describe() and "held by n1" in out[0].describe()


def test_the_counter_exists_before_the_first_rejection() -> None:
    # increase() over a series born at 1 sees nothing: the series must start at 0.
    text = generate_latest(Metrics().registry).decode()
    assert 'flotilla_rejected_events_total{reason="not_holder"} 0.0' in text


def test_the_prometheus_rule_reads_the_counter() -> None:
    doc = yaml.safe_load(RULES.read_text())
    rule = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}["FlotillaRejectedEvents"]
    assert "flotilla_rejected_events_total" in rule["expr"] and "increase(" in rule["expr"]
    assert rule["labels"]["severity"] == "warning"
