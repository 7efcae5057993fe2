"""A simulation scenario: the fleet, the work, the faults and the operator's API traffic.

Scenarios are TOML or JSON files with the fields of `Scenario`; `BUILTIN` holds the named ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import msgspec

PosInt = Annotated[int, msgspec.Meta(ge=1)]
NonNeg = Annotated[float, msgspec.Meta(ge=0)]


class JobKind(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One kind of job in the mix: its share and how long it runs (uniform in min..max)."""

    name: str = "transcode"
    weight: NonNeg = 1.0
    pool: str = "cpu"
    seconds_min: NonNeg = 2.0
    seconds_max: NonNeg = 10.0


class Death(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """`nodes` nodes die (SIGKILL of their process) `at_s` seconds into the run; with
    `restart_after_s` they come back that much later (a flap), with their journals."""

    at_s: NonNeg
    nodes: PosInt = 1
    restart_after_s: NonNeg | None = None


class ApiTraffic(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An operator's requests per second besides submits."""

    get_per_s: NonNeg = 2.0
    list_per_s: NonNeg = 1.0
    nodes_per_s: NonNeg = 0.5


class Scenario(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str = "custom"
    nodes: PosInt = 20
    #: Slots per node, per pool (every node serves every pool named here).
    slots: dict[str, PosInt] = msgspec.field(default_factory=lambda: {"cpu": 4})
    jobs: list[JobKind] = msgspec.field(default_factory=lambda: [JobKind()])
    #: Submissions per second, for `duration_s` seconds.
    rate: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    duration_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    deaths: list[Death] = []
    api: ApiTraffic = msgspec.field(default_factory=ApiTraffic)
    #: Finished job rows (with their events) in Postgres before the run: the big table.
    seed_jobs: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: Simulator processes the surviving nodes are spread over (0: one per 250, at least 2);
    #: each death's nodes run in a process of their own, which the death SIGKILLs.
    processes: Annotated[int, msgspec.Meta(ge=0)] = 0
    #: nats-servers: 1, or 3 for a cluster with streams and the node bucket at R3.
    nats_servers: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    #: Niceness of the simulator processes (0-19). On a real fleet the nodes' CPU is their
    #: own machines'; here it is the machine the control plane, nats-server and PostgreSQL are
    #: measured on, and a positive value makes the nodes yield it to them.
    nodes_nice: Annotated[int, msgspec.Meta(ge=0, le=19)] = 0
    #: JetStream ack wait: how soon a dead node's jobs are handed to another.
    ack_wait: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    #: Control-plane settings (`[alerts] node_offline_after`, `alert_interval`).
    node_offline_after: Annotated[float, msgspec.Meta(gt=0)] = 30.0
    alert_interval: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    #: Daemon settings other than the defaults, as in its config file (say heartbeat_interval).
    daemon: dict[str, float | int | str | bool] = {}
    #: Longest wait after the last submission for every job to end.
    settle_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0
    seed: int = 1

    def daemon_settings(self) -> dict[str, float | int | str | bool]:
        """The nodes' daemon settings: the scenario's, and unless it names one, a heartbeat that
        fits its `node_offline_after` (the daemon's default, 10 s, would read every node offline
        between two beats under the small scenarios' 6 to 8 s). Raises ValueError for a heartbeat
        that leaves a live node less than two beats inside the offline threshold."""
        beat = min(_default_heartbeat(), self.node_offline_after / 3)
        settings: dict[str, float | int | str | bool] = {"heartbeat_interval": beat, **self.daemon}
        given = settings["heartbeat_interval"]
        if isinstance(given, bool) or not isinstance(given, int | float):
            raise ValueError(f"daemon.heartbeat_interval must be a number, not {given!r}")
        if 2 * given >= self.node_offline_after:
            raise ValueError(
                f"daemon.heartbeat_interval {given:g} s leaves live nodes offline: keep two "
                f"heartbeats inside node_offline_after ({self.node_offline_after:g} s)"
            )
        return settings

    def process_count(self) -> int:
        """Processes of the nodes that live throughout (the dying ones get one per death)."""
        return self.processes or max(2, math.ceil(self.nodes / 250))


SMALL = Scenario(
    name="small",
    nodes=20,
    slots={"cpu": 2},
    jobs=[JobKind(seconds_min=0.5, seconds_max=3.0)],
    rate=4.0,
    duration_s=30.0,
    deaths=[Death(at_s=10.0, nodes=1)],
    api=ApiTraffic(get_per_s=2.0, list_per_s=1.0, nodes_per_s=1.0),
    seed_jobs=2_000,
    processes=1,
    ack_wait=10.0,
    node_offline_after=8.0,
    alert_interval=2.0,
    settle_s=120.0,
)

FLEET = Scenario(
    name="fleet",
    nodes=1000,
    slots={"cpu": 4},
    jobs=[
        JobKind(name="short", weight=3.0, seconds_min=5.0, seconds_max=30.0),
        JobKind(name="long", weight=1.0, seconds_min=30.0, seconds_max=120.0),
    ],
    rate=20.0,
    duration_s=300.0,
    deaths=[Death(at_s=60.0, nodes=5), Death(at_s=120.0, nodes=5, restart_after_s=60.0)],
    api=ApiTraffic(get_per_s=5.0, list_per_s=1.0, nodes_per_s=0.2),
    seed_jobs=1_000_000,
    processes=4,
    ack_wait=60.0,
    settle_s=400.0,
)

BUILTIN = {s.name: s for s in (SMALL, FLEET)}


def _default_heartbeat() -> float:
    from daemon.config import DaemonConfig

    beat = next(
        f.default for f in msgspec.structs.fields(DaemonConfig) if f.name == "heartbeat_interval"
    )
    assert isinstance(beat, float)
    return beat


def load(path: Path) -> Scenario:
    data = path.read_bytes()
    if path.suffix == ".json":
        return msgspec.json.decode(data, type=Scenario)
    return msgspec.toml.decode(data, type=Scenario)
