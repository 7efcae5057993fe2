"""Encoder health: withdrawn after N failures in a row, restored when re-verification passes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client as NATS

from daemon.encoder_health import EncoderHealthTracker
from daemon.job.requirements import NodeView
from daemon.journal.outbox import OutboxPublisher
from daemon.journal.reporter import Reporter
from daemon.journal.store import Journal


async def test_withdraw_then_restore(tmp_path: Path, nc: NATS) -> None:
    journal = await Journal.open(tmp_path / "j.sqlite3")
    outbox = OutboxPublisher(journal, nc.jetstream())  # not started: rows stay pending
    try:
        node = NodeView(verified_encoders={"h264_vaapi", "libx264"})
        tracker = EncoderHealthTracker(node, Reporter(journal, outbox, "n1"), 2, 0.05)
        await tracker.job_done(["h264_vaapi"], "libx264")
        await tracker.job_done([], "h264_vaapi")  # a success resets the streak
        await tracker.job_done(["h264_vaapi"], "libx264")
        assert node.usable_encoders() == {"h264_vaapi", "libx264"}
        await tracker.job_done(["h264_vaapi"], "libx264")
        assert node.usable_encoders() == {"libx264"}

        async def works(encoder: str) -> str | None:
            return None

        runner = asyncio.create_task(tracker.run(works, poll=0.02))
        try:
            for _ in range(100):
                if not node.withdrawn_encoders:
                    break
                await asyncio.sleep(0.02)
        finally:
            runner.cancel()
        assert node.usable_encoders() == {"h264_vaapi", "libx264"}
        kinds = [row.kind for row in await journal.pending_outbox(10)]
        assert kinds == ["encoder_health", "encoder_health"]
    finally:
        await journal.close()
