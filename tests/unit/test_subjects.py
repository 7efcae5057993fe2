"""Subject names and the partition rule, against a table of known ids."""

from __future__ import annotations

import pytest

from schemas.subjects import Subjects, fnv1a32, partition_of

# Known values: job-0042 -> 5, 01J9ZK3YQ8 -> 1, job-0001 -> 0 for 8 partitions, as the server
# computes them (verified against nats-server in the team notes and in test_topology).
KNOWN = [("job-0042", 8, 5), ("01J9ZK3YQ8", 8, 1), ("job-0001", 8, 0)]


@pytest.mark.parametrize(("job_id", "n", "expected"), KNOWN)
def test_partition_table(job_id: str, n: int, expected: int) -> None:
    assert partition_of(job_id, n) == expected


def test_fnv_reference_vectors() -> None:
    assert fnv1a32(b"") == 0x811C9DC5
    assert fnv1a32(b"a") == 0xE40C292C
    assert fnv1a32(b"foobar") == 0xBF9CF968


def test_subject_names() -> None:
    s = Subjects("flotilla", 8)
    assert s.submit("cpu", "high", "job-0042") == "flotilla.submit.cpu.high.job-0042"
    assert s.job_stored("cpu", "high", "job-0042") == "flotilla.jobs.cpu.high.5.job-0042"
    assert s.jobs_transform == (
        "flotilla.jobs.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(8,3)}}.{{wildcard(3)}}"
    )
    assert s.jobs_stream == "FLOTILLA_JOBS"
    assert s.consumer("nvenc", "low") == "jobs-nvenc-low"


@pytest.mark.parametrize(
    ("pool", "priority", "job_id"),
    [("cpu", "urgent", "j"), ("c.pu", "high", "j"), ("cpu", "high", "a.b"), ("cpu", "high", "*")],
)
def test_unsafe_tokens_refused(pool: str, priority: str, job_id: str) -> None:
    with pytest.raises(ValueError):
        Subjects().submit(pool, priority, job_id)


def test_bad_prefix() -> None:
    with pytest.raises(ValueError):
        Subjects("Bad.Prefix")
