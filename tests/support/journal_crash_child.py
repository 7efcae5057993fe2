"""Child process of the journal crash test: job lifecycles in a loop until SIGKILLed.

Prints `<job_id> <state> <event_id>` after each commit returns; the parent kills it mid-stream
and checks that everything printed survived. Bounded in count and time in case no kill comes.
"""

from __future__ import annotations

import asyncio
import sys
import time

from daemon.journal.store import Journal
from tests.support.journal import accepted, completed, started

WORKERS = 4
MAX_JOBS_PER_WORKER = 5000
MAX_SECONDS = 30.0


async def worker(journal: Journal, run_id: str, w: int, deadline: float) -> None:
    for i in range(MAX_JOBS_PER_WORKER):
        if time.monotonic() > deadline:
            return
        job = f"{run_id}-w{w}-{i}"
        ev = accepted(job)
        await journal.job_received(
            job,
            1,
            stream_seq=i,
            subject="s",
            pool="cpu",
            priority="normal",
            spec=b"{}",
            events=[ev],
        )
        print(job, "received", ev.event_id, flush=True)
        ev2 = started(job)
        await journal.job_transition(job, 1, "running", events=[ev2])
        print(job, "running", ev2.event_id, flush=True)
        ev3 = completed(job)
        await journal.job_transition(job, 1, "succeeded", events=[ev3])
        print(job, "succeeded", ev3.event_id, flush=True)


async def main(path: str, run_id: str) -> None:
    journal = await Journal.open(path)
    deadline = time.monotonic() + MAX_SECONDS
    await asyncio.gather(*(worker(journal, run_id, w, deadline) for w in range(WORKERS)))
    await journal.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
