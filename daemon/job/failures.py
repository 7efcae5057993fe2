"""How many runs of a job have failed so far, fleet-wide: what `max_attempts` counts.

JetStream's `num_delivered` also counts deliveries that never ran the job (a node that lacks a
requirement hands it back, a drain or a restart hands it back), so counting attempts from it
let hand-backs use up a job's attempts. Each failed run that will be retried is recorded in the
`<prefix>_failures` bucket under the job's `<tenant>.<job_id>` key (compare-and-set, so two
nodes never lose a count), and the next failure reads it.

Where the bucket cannot be read (a control plane older than it, NATS away), the count falls back
to the delivery number: never more attempts than a job had before, at worst fewer.
"""

from __future__ import annotations

import logging

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from schemas.subjects import Subjects, job_msg_id

log = logging.getLogger("flotilla.job")

#: Compare-and-set tries before a count gives up (another node's write won every race).
_CAS_TRIES = 5


class FailureCounts:
    """Reads and bumps a job's failed-run count in the failures bucket."""

    def __init__(self, js: JetStreamContext, subjects: Subjects) -> None:
        self.js, self.bucket = js, subjects.failures_bucket
        self._kv: KeyValue | None = None
        self._missing_logged = False

    async def _open(self) -> KeyValue | None:
        if self._kv is None:
            try:
                self._kv = await self.js.key_value(self.bucket)
            except BucketNotFoundError:
                if not self._missing_logged:  # once: it stays missing until the control upgrades
                    log.warning("bucket %s missing: attempts count deliveries", self.bucket)
                    self._missing_logged = True
                return None
        return self._kv

    async def failed_before(self, tenant: str, job_id: str) -> int | None:
        """Failed runs recorded for the job; None when the bucket cannot be read."""
        try:
            kv = await self._open()
            if kv is None:
                return None
            try:
                entry = await kv.get(job_msg_id(tenant, job_id))
            except KeyNotFoundError:
                return 0
            return _count(entry.value)
        except (NatsError, OSError) as exc:
            log.warning("failure count unreadable (%s): attempts count deliveries", exc)
            self._kv = None
            return None

    async def record(self, tenant: str, job_id: str, failed: int) -> bool:
        """Raise the job's count to at least `failed`; False when it could not be written."""
        key = job_msg_id(tenant, job_id)
        try:
            kv = await self._open()
            if kv is None:
                return False
            for _ in range(_CAS_TRIES):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    try:
                        await kv.create(key, str(failed).encode())
                        return True
                    except KeyWrongLastSequenceError:
                        continue  # another node created it first: read and compare again
                if _count(entry.value) >= failed:
                    return True
                try:
                    await kv.update(key, str(failed).encode(), last=entry.revision)
                    return True
                except KeyWrongLastSequenceError:
                    continue
            log.warning("failure count of %s lost %d races", key, _CAS_TRIES)
        except (NatsError, OSError) as exc:
            log.warning("failure count not recorded (%s)", exc)
            self._kv = None
        return False


def _count(value: bytes | None) -> int:
    try:
        return max(0, int(value or b"0"))
    except ValueError:  # a hostile or broken writer: count nothing rather than fail the job
        return 0


def runs_so_far(failed_before: int | None, delivery: int) -> int:
    """This run's number among the job's counted runs: the failed ones before it, plus itself.
    Without a count, the delivery number (what attempts meant before the bucket existed)."""
    if failed_before is None:
        return delivery
    return min(failed_before + 1, delivery)
