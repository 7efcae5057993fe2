"""Deleting one stored message by sequence, where it may be gone already.

The server never answers such a delete with a 404, so nats-py never raises NotFoundError for
it: a file store answers 500 "delete failed" (err_code 10057) naming the cause, a memory store
400 "sequence not found" (err_code 10043). A message deleted meanwhile (a cancel, a release, a
sweep of another instance) is an outcome, not an error; every other refusal is raised.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

_DELETE_FAILED, _NO_MESSAGE = 10057, ("no message found", "stream store EOF")
_SEQUENCE_NOT_FOUND = 10043


def is_missing(exc: APIError) -> bool:
    """Whether a delete's refusal says only that the message was not there."""
    if isinstance(exc, NotFoundError) or exc.err_code == _SEQUENCE_NOT_FOUND:
        return True
    return exc.err_code == _DELETE_FAILED and exc.description in _NO_MESSAGE


async def delete_stored(js: JetStreamContext, stream: str, seq: int) -> bool:
    """Delete message `seq` of `stream`; False when it was not there."""
    try:
        await js.delete_msg(stream, seq)
    except APIError as exc:
        if not is_missing(exc):
            raise
        return False
    return True
