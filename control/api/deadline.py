"""Submit-time deadline admission: could this job finish by its deadline?

Estimated finish = now + the queue ahead (jobs of the pool it waits behind: those of higher
priorities, and at its own the deadline jobs held or released before it; each taken as long
as this one, over the pool's live slots) + the job's own run time, learned
from completed runs like it (control/runtimes.py). No estimate: the job is admitted and the
reply says so. See docs/deadlines.md.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from control.nodes import FleetNode
from control.runtimes import RunEstimate, RuntimeKey, finish_at, queue_seconds
from schemas.common import PRIORITIES, Priority
from schemas.subjects import Subjects

DeadlinePolicy = Literal["refuse", "warn"]


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Verdict:
    #: Epoch seconds; None without an estimate.
    finish: float | None
    runs: int
    note: str
    #: Why the deadline cannot be met, or None when it can (or nothing is known).
    infeasible: str | None = None
    #: The job's own estimated run time (seconds), kept for the at-risk check.
    run_s: float | None = None


def past_deadline(deadline: float, now: float) -> str | None:
    if deadline > now:
        return None
    return f"deadline {stamp(deadline)} is already past (now {stamp(now)})"


def judge(
    deadline: float, now: float, run: RunEstimate | None, key: RuntimeKey, ahead: int, slots: int
) -> Verdict:
    if run is None:
        note = f"no estimate: no completed run of {key.describe()} yet; admitted"
        return Verdict(None, 0, note)
    finish = finish_at(now, run.seconds, ahead, slots)
    wait = queue_seconds(ahead, run.seconds, slots)
    note = (
        f"estimate from {run.runs} run{'s' if run.runs != 1 else ''} of {key.describe()}: "
        f"{run.seconds:.0f} s to run (by {run.basis}), {wait:.0f} s queued "
        f"({ahead} job{'s' if ahead != 1 else ''} ahead over {max(1, slots)} slot"
        f"{'s' if max(1, slots) != 1 else ''})"
    )
    infeasible = None
    if finish > deadline:
        infeasible = (
            f"deadline {stamp(deadline)} cannot be met: the job could finish about "
            f"{stamp(finish)} ({note})"
        )
    return Verdict(finish, run.runs, note, infeasible, run.seconds)


def live_slots(nodes: Iterable[FleetNode], pool: str) -> int:
    """Job slots of the online nodes that serve `pool` (a node that names none counts one)."""
    return sum(
        n.capabilities.slots.get(pool, 1)
        for n in nodes
        if n.state == "online" and pool in n.capabilities.pools
    )


async def queued_ahead(
    js: JetStreamContext, subjects: Subjects, pool: str, priority: Priority
) -> int:
    """Jobs a job with a deadline waits behind: every lane of the priorities above its own,
    its own tier's due lanes (its plain lanes come after it), and every held job of those
    tiers, whatever its deadline (an overcount: a later deadline would go after it)."""
    ahead = 0
    above = PRIORITIES[: PRIORITIES.index(priority) + 1]
    for prio in above:
        for lane in subjects.lanes(pool, prio):
            if prio == priority and not lane.due:
                continue
            try:
                info = await js.consumer_info(subjects.jobs_stream, lane.consumer)
            except NotFoundError:
                continue
            ahead += info.num_pending or 0
        held = subjects.held_stored("*", pool, prio, "*")
        state = (await js.stream_info(subjects.jobs_stream, subjects_filter=held)).state
        ahead += sum((state.subjects or {}).values())
    return ahead
