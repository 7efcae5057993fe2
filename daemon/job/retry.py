"""Pure retry policy: (outcome, attempt, max attempts, back-off) -> ack, nak(delay) or term.

JetStream's `max_deliver` is only a crash-loop ceiling; per-job attempts are decided here, from
`msg.metadata.num_delivered`, so no job loops forever and a permanent error never retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: `None` is success. The error kinds of `schemas.events.ErrorKind`, plus `cancelled`.
Outcome = (
    Literal["transient", "permanent", "timeout", "resource", "interrupted", "cancelled"] | None
)

#: Kinds that never get another attempt, whatever the attempt count.
FINAL_KINDS = frozenset({"permanent", "cancelled"})


@dataclass(frozen=True)
class Ack:
    """Done: acknowledge (after the terminal event is published)."""


@dataclass(frozen=True)
class Nak:
    """Try again on some node after `delay` seconds."""

    delay: float


@dataclass(frozen=True)
class Term:
    """Never redeliver: the failure (or cancellation) is final."""

    reason: str


Disposition = Ack | Nak | Term


def backoff(attempt: int, base: float, cap: float) -> float:
    """Exponential: base, 2·base, 4·base, … capped; attempt counts from 1."""
    exponent = max(0, min(attempt - 1, 30))
    return float(min(cap, base * (2**exponent)))


def decide(
    outcome: Outcome, attempt: int, max_attempts: int, base: float, cap: float
) -> Disposition:
    if outcome is None:
        return Ack()
    if outcome in FINAL_KINDS:
        return Term(outcome)
    if attempt >= max_attempts:
        return Term(f"{outcome} failure on the last attempt ({attempt} of {max_attempts})")
    return Nak(backoff(attempt, base, cap))
