"""The retry policy as a table: every outcome at first, middle and last attempts."""

from __future__ import annotations

import pytest

from daemon.job.retry import Ack, Disposition, Nak, Outcome, Term, backoff, decide

CASES: list[tuple[Outcome, int, int, type]] = [
    (None, 1, 3, Ack),
    (None, 3, 3, Ack),
    ("transient", 1, 3, Nak),
    ("transient", 2, 3, Nak),
    ("transient", 3, 3, Term),
    ("transient", 7, 3, Term),  # delivered past max_attempts (crash loop): never again
    ("timeout", 1, 2, Nak),
    ("timeout", 2, 2, Term),
    ("resource", 1, 1, Term),
    ("interrupted", 1, 5, Nak),
    ("permanent", 1, 5, Term),
    ("cancelled", 1, 5, Term),
]


@pytest.mark.parametrize(("outcome", "attempt", "max_attempts", "expected"), CASES)
def test_decide_table(outcome: Outcome, attempt: int, max_attempts: int, expected: type) -> None:
    result: Disposition = decide(outcome, attempt, max_attempts, base=1.0, cap=10.0)
    assert isinstance(result, expected)


@pytest.mark.parametrize(
    ("attempt", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (100, 10.0)]
)
def test_backoff_is_exponential_and_capped(attempt: int, delay: float) -> None:
    assert backoff(attempt, 1.0, 10.0) == delay
    assert decide("transient", attempt, 1000, 1.0, 10.0) == Nak(delay)


def test_term_names_the_reason() -> None:
    result = decide("transient", 3, 3, 1.0, 10.0)
    assert isinstance(result, Term)
    assert "last attempt" in result.reason
