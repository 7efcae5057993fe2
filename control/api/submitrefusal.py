"""The clear refusal of version 1 submits: an error PubAck instead of silence.

Version 2 of the submit subject put the tenant in it (schemas.subjects). The jobs stream no
longer captures the version 1 form, so without an answer a producer's JetStream publish would
only time out or see "no responders". Every control-plane instance listens on the version 1
form (in one queue group, so one of them answers) and replies the way JetStream refuses a
publish, so nats-py, nats.go and the others raise an API error carrying the new form.
"""

from __future__ import annotations

import json
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg

from control.responder import QueueResponder
from schemas.subjects import ERR_SUBMIT_SUBJECT_V1, SUBMIT_SUBJECT_VERSION, Subjects

log = logging.getLogger("flotilla.submitrefusal")
QUEUE = "flotilla-submit-v1"
#: At most one log line per this many seconds: a producer in a retry loop must not flood it.
LOG_EVERY = 30.0


def refusal(subjects: Subjects, subject: str) -> bytes:
    """The error PubAck for a publish to `subject` (a version 1 submit subject)."""
    description = (
        f"the submit subject is now {subjects.prefix}.submit.<tenant>.<pool>.<priority>.<job_id>"
        f" (wire v{SUBMIT_SUBJECT_VERSION}); {subject} has no tenant token and was not stored:"
        " publish it again with the job's tenant after 'submit'"
    )
    error = {"code": 400, "err_code": ERR_SUBMIT_SUBJECT_V1, "description": description}
    return json.dumps({"error": error}).encode()


class SubmitRefusal:
    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc, self.subjects = nc, subjects
        self.refused = 0
        self._logged_at = float("-inf")
        self._responder = QueueResponder(nc, subjects.submit_v1_wildcard, QUEUE, self._refuse)
        self.start, self.stop = self._responder.start, self._responder.stop

    async def _refuse(self, msg: Msg) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            self._logged_at = now
            log.warning(
                "refused a version 1 submit on %s (%d so far): producers must publish to %s",
                msg.subject, self.refused, self.subjects.submit_wildcard,
            )  # fmt: skip
        if msg.reply:  # a core publish without a reply subject has nobody to tell
            await msg.respond(refusal(self.subjects, msg.subject))
