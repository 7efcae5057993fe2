"""`max_attempts` counts runs that failed, not deliveries: hand-backs use up none.

A node that lacks the job's label hands it back again and again before any node can run it;
then a node that has the label runs it, and every run fails (hard timeout). The job still gets
its two runs, and ends after the second, though JetStream delivered it more often than that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from daemon.job.failures import FailureCounts, runs_so_far
from schemas.subjects import Subjects
from tests.support.daemons import events, job, kinds, submit, until


async def test_hand_backs_do_not_use_up_attempts(
    js: JetStreamContext, prefix: str, start_daemon: Any, long_clip: Path, tmp_path: Path
) -> None:
    await start_daemon("lacks")
    spec = job("hb", long_clip, tmp_path / "hb.mp4", preset="veryslow", width=640, height=480)
    spec["timeouts"] = {"hard_seconds": 1.0}
    spec["requirements"] = {"labels": {"site": "a"}}
    await submit(js, prefix, spec)

    async def handed_back_twice() -> bool:
        return kinds(await events(js, prefix, "hb")).count("handed_back") >= 2

    await until(handed_back_twice, 60.0)
    await start_daemon("has", labels={"site": "a"})

    async def final() -> bool:
        return any(e["kind"] == "failed" and e["final"] for e in await events(js, prefix, "hb"))

    await until(final, 120.0)
    evts = await events(js, prefix, "hb")
    failed = [e for e in evts if e["kind"] == "failed"]
    assert [(f["node_id"], f["error_kind"], f["final"]) for f in failed] == [
        ("has", "timeout", False),
        ("has", "timeout", True),
    ]
    # The deciding run came after more deliveries than max_attempts (2): counted by delivery,
    # the job would have ended after its first run.
    assert failed[-1]["attempt"] > 2
    assert kinds(evts).count("started") == 2 and "completed" not in kinds(evts)
    counts = FailureCounts(js, Subjects(prefix))
    assert await counts.failed_before("default", "hb") == 1  # the final failure is not retried


async def test_without_the_bucket_attempts_count_deliveries(
    js: JetStreamContext, prefix: str
) -> None:
    """A control plane older than the failures bucket: the count falls back to deliveries."""
    subjects = Subjects(prefix)
    await js.delete_key_value(subjects.failures_bucket)
    counts = FailureCounts(js, subjects)
    before = await counts.failed_before("default", "j-1")
    assert before is None and not await counts.record("default", "j-1", 1)
    assert runs_so_far(before, 3) == 3


def test_a_lowered_count_never_exceeds_the_deliveries() -> None:
    assert runs_so_far(0, 1) == 1
    assert runs_so_far(1, 4) == 2  # three deliveries before, one failed run among them
    assert runs_so_far(9, 3) == 3  # a count above the deliveries is not believed
