"""How much of each fault a run injects: `short` (in `make test`), `medium` and `full`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    #: Episodes per fault kind (0 leaves the phase out).
    daemon_kills: int
    nats_sigterm: int
    nats_sigkill: int
    leader_kills: int
    postgres_outages: int
    control_kills: int
    network_cuts: int
    disk_full: int
    malformed: int
    #: How long a Postgres outage, a network cut and a disk-full episode last, in seconds.
    postgres_down_s: float
    cut_s: float
    disk_full_s: float
    #: Jobs submitted per episode (a steady trickle while the phase runs).
    jobs_per_episode: int
    #: Daemons in the fleet (the cluster stage runs two).
    nodes: int = 3
    #: Bound on the wait for every job to end after the last fault.
    settle_s: float = 600.0
    #: JetStream ack wait of the fleet; the shipped default except in `short`, which must stay
    #: within a few minutes while a crashed node's jobs still wait for it.
    ack_wait: float = 120.0

    @property
    def nats_restarts(self) -> int:
        return self.nats_sigterm + self.nats_sigkill


PROFILES = {
    "short": Profile(
        name="short",
        daemon_kills=2,
        nats_sigterm=0,
        nats_sigkill=1,
        leader_kills=0,
        postgres_outages=1,
        control_kills=1,
        network_cuts=1,
        disk_full=1,
        malformed=300,
        postgres_down_s=8.0,
        cut_s=8.0,
        disk_full_s=8.0,
        jobs_per_episode=2,
        nodes=2,
        settle_s=240.0,
        ack_wait=20.0,
    ),
    "medium": Profile(
        name="medium",
        daemon_kills=5,
        nats_sigterm=2,
        nats_sigkill=2,
        leader_kills=2,
        postgres_outages=1,
        control_kills=2,
        network_cuts=1,
        disk_full=1,
        malformed=2000,
        postgres_down_s=20.0,
        cut_s=20.0,
        disk_full_s=15.0,
        jobs_per_episode=3,
    ),
    "full": Profile(
        name="full",
        daemon_kills=20,
        nats_sigterm=5,
        nats_sigkill=5,
        leader_kills=5,
        postgres_outages=2,
        control_kills=5,
        network_cuts=2,
        disk_full=2,
        malformed=10_000,
        postgres_down_s=30.0,
        cut_s=60.0,
        disk_full_s=30.0,
        jobs_per_episode=4,
        settle_s=900.0,
    ),
}
