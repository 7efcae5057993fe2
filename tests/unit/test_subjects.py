"""Subject names and the partition rule, against a table of known ids."""

from __future__ import annotations

import pytest

from daemon.job.admit import check_msg_id, check_subject, reported_tenant
from schemas.codec import DecodeError
from schemas.jobs import Canary, JobSpec
from schemas.subjects import (
    SUBMIT_SUBJECT_VERSION,
    StoredJob,
    Subjects,
    fnv1a32,
    parse_stored,
    partition_of,
)

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
    assert s.submit("acme", "cpu", "high", "job-0042") == "flotilla.submit.acme.cpu.high.job-0042"
    assert s.submit_wildcard == "flotilla.submit.*.*.*.*"
    assert s.submit_v1_wildcard == "flotilla.submit.*.*.*"
    assert s.pool_submits("nvenc") == "flotilla.submit.*.nvenc.>"
    assert s.tenant_submits("acme") == "flotilla.submit.acme.>"
    assert s.job_stored("acme", "cpu", "high", "job-0042") == (
        "flotilla.jobs.cpu.high.5.acme.job-0042"
    )
    assert s.job_stored_v1("cpu", "high", "job-0042") == "flotilla.jobs.cpu.high.5.job-0042"
    # Wildcards of the submit subject: 1 tenant, 2 pool, 3 priority, 4 job id.
    assert s.jobs_transform == (
        "flotilla.jobs.{{wildcard(2)}}.{{wildcard(3)}}.{{partition(8,4)}}"
        ".{{wildcard(1)}}.{{wildcard(4)}}"
    )
    assert s.jobs_stream == "FLOTILLA_JOBS"
    assert s.consumer("nvenc", "low") == "jobs-nvenc-low"


def test_version_1_form_is_disjoint_from_version_2() -> None:
    # The refusal listens on the version 1 wildcard: it must never catch a version 2 submit.
    s = Subjects("flotilla")
    assert len(s.submit_v1_wildcard.split(".")) != len(s.submit("t", "cpu", "low", "j").split("."))
    assert SUBMIT_SUBJECT_VERSION == 2


def test_parse_stored_both_versions() -> None:
    s = Subjects("flotilla", 8)
    now = parse_stored(s.job_stored("acme", "cpu", "high", "job-0042"))
    assert now == StoredJob("cpu", "high", 5, "acme", "job-0042")
    before = parse_stored(s.job_stored_v1("cpu", "high", "job-0042"))
    assert before == StoredJob("cpu", "high", 5, None, "job-0042")


@pytest.mark.parametrize(
    "subject",
    ["flotilla.submit.acme.cpu.high.j", "flotilla.jobs.cpu.high.j", "flotilla.jobs.cpu.high.x.a.j",
     "flotilla.jobs.cpu.high.5.a.b.j"],
)  # fmt: skip
def test_parse_stored_refuses_other_shapes(subject: str) -> None:
    with pytest.raises(ValueError):
        parse_stored(subject)


@pytest.mark.parametrize(
    ("tenant", "pool", "priority", "job_id"),
    [
        ("t", "cpu", "urgent", "j"),
        ("t", "c.pu", "high", "j"),
        ("t", "cpu", "high", "a.b"),
        ("t", "cpu", "high", "*"),
        ("a.b", "cpu", "high", "j"),
        ("*", "cpu", "high", "j"),
        (">", "cpu", "high", "j"),
        ("", "cpu", "high", "j"),
    ],
)
def test_unsafe_tokens_refused(tenant: str, pool: str, priority: str, job_id: str) -> None:
    with pytest.raises(ValueError):
        Subjects().submit(tenant, pool, priority, job_id)


def test_bad_prefix() -> None:
    with pytest.raises(ValueError):
        Subjects("Bad.Prefix")


def _spec(tenant: str) -> JobSpec:
    return JobSpec(job_id="j-1", tenant=tenant, input="file:///x", operation=Canary())


def test_daemon_refuses_a_body_naming_another_tenant() -> None:
    s = Subjects("flotilla")
    check_subject(_spec("acme"), s.job_stored("acme", "cpu", "normal", "j-1"), "cpu", "normal")
    with pytest.raises(DecodeError) as refused:
        check_subject(_spec("other"), s.job_stored("acme", "cpu", "normal", "j-1"), "cpu", "normal")
    assert "'acme'" in str(refused.value) and "'other'" in str(refused.value)


def test_daemon_takes_the_body_tenant_of_a_version_1_job() -> None:
    # Stored before the upgrade, accepted under the old rules: any tenant in its body stands.
    stored = Subjects("flotilla").job_stored_v1("cpu", "normal", "j-1")
    check_subject(_spec("other"), stored, "cpu", "normal")
    with pytest.raises(DecodeError, match="subject says cpu/high/j-1"):
        check_subject(_spec("other"), stored, "cpu", "high")


@pytest.mark.parametrize(
    "msg_id",
    [None, "", "j-1", "acme.j-1", "acme.j-1.retry.7"],  # none, pre-tenant ids, its own, a retry
)
def test_daemon_takes_a_job_under_its_own_msg_id(msg_id: str | None) -> None:
    check_msg_id(_spec("acme"), msg_id)


@pytest.mark.parametrize("msg_id", ["other.j-1", "acme.j-2", "acme.j-1x", "other.j-1.retry.1"])
def test_daemon_refuses_a_job_under_another_jobs_msg_id(msg_id: str) -> None:
    with pytest.raises(DecodeError) as refused:
        check_msg_id(_spec("acme"), msg_id)
    assert f"Nats-Msg-Id {msg_id!r}" in str(refused.value) and "'acme.j-1'" in str(refused.value)


def test_an_invalid_jobs_tenant_is_its_subjects() -> None:
    s = Subjects("flotilla")
    assert reported_tenant(s.job_stored("acme", "cpu", "normal", "j-1"), _spec("other")) == "acme"
    v1 = s.job_stored_v1("cpu", "normal", "j-1")
    assert reported_tenant(v1, _spec("other")) == "other"  # no tenant token: the body's
    assert reported_tenant(v1, None) == ""
    assert reported_tenant("flotilla.submit.x", None) == ""
