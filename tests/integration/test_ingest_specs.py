"""A job published straight to NATS: its spec reaches Postgres through the `accepted` event.

The control plane starts only after the node has finished with the jobs, so their messages have
left the jobs stream: whatever it knows of them came from the events.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from control.deadletters.advisories import DeadLetters
from control.ingest import Ingestor
from schemas.registry import JOB_DECODER
from schemas.subjects import Subjects
from tests.support.daemons import has, submit, until
from tests.support.ingest import count, migrated_pool, running, wait_until


def probe_job(job_id: str, src: Path) -> dict[str, Any]:
    return {"v": 1, "job_id": job_id, "input": f"file://{src}", "operation": {"op": "probe"},
            "tenant": "acme", "metadata": {"batch": "b7"}}  # fmt: skip


async def test_specs_of_jobs_published_straight_to_nats(
    js: JetStreamContext, prefix: str, start_daemon: Any, clip: Path, tmp_path: Path,
    database_url: str,
) -> None:  # fmt: skip
    subjects = Subjects(prefix)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video" * 100)
    done, dies = probe_job("done", clip), probe_job("dies", junk)
    dies["max_attempts"] = 1  # its node fails it for good and terminates the message
    await start_daemon()
    for spec in (done, dies):
        await submit(js, prefix, spec)
    await until(has(js, prefix, "done", "completed"))
    await until(has(js, prefix, "dies", "failed"))
    await until(lambda: _stream_empty(js, subjects))

    async with migrated_pool(database_url) as db:
        dead = DeadLetters(js, db, subjects, fetch_timeout=0.2, wait_delay=0.2)
        async with running(Ingestor(js, db, subjects, fetch_timeout=0.2)), running(dead):
            sql = "SELECT count(*) FROM dead_letters WHERE job_id = 'dies'"
            await wait_until(lambda: _at_least(db, sql, 1), "the dead letter")
            sql = "SELECT count(*) FROM jobs WHERE state = 'completed'"
            await wait_until(lambda: _at_least(db, sql, 1), "the completed job")
        for spec in (done, dies):
            row = await db.fetchrow(
                "SELECT spec::text AS spec FROM jobs WHERE job_id = $1", spec["job_id"]
            )
            assert row["spec"] is not None, spec["job_id"]
            want = JOB_DECODER.decode(json.dumps(spec).encode())
            assert JOB_DECODER.decode(row["spec"]) == want
        # Terminated: re-published from that spec, so `flotilla jobs retry` can run it again.
        letter = await js.get_last_msg(
            subjects.dead_letter_stream, subjects.dead_letter("acme", "dies")
        )
        assert JOB_DECODER.decode(letter.data or b"").metadata == {"batch": "b7"}


async def _stream_empty(js: JetStreamContext, subjects: Subjects) -> bool:
    return (await js.stream_info(subjects.jobs_stream)).state.messages == 0


async def _at_least(db: Any, sql: str, n: int) -> bool:
    return await count(db, sql) >= n
