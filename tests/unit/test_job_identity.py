"""A job is named by (tenant, job_id): its dedup id, its dead letter's subject, the commands that
name it, and how the CLI shows a webhook attempt of it."""

from __future__ import annotations

import pytest

from control.api.service import command_bytes
from control.cli.jobquery import _detail
from schemas.api import JobEventRecord
from schemas.codec import DecodeError, Decoder
from schemas.common import Wire
from schemas.control_msgs import NodeCommand
from schemas.subjects import Subjects, job_msg_id, job_msg_id_fits, retry_msg_id


def test_the_dedup_id_names_the_tenant() -> None:
    assert job_msg_id("acme", "job-7") == "acme.job-7"
    assert job_msg_id("acme", "job-7") != job_msg_id("bravo", "job-7")
    assert retry_msg_id("acme", "job-7", 12) == "acme.job-7.retry.12"
    with pytest.raises(ValueError, match="tenant"):
        job_msg_id("ac.me", "job-7")


@pytest.mark.parametrize(
    ("msg_id", "fits"),
    [
        (None, True),  # no dedup asked for
        ("", True),
        ("job-7", True),  # a producer of before tenant-scoped ids
        ("acme.job-7", True),
        ("acme.job-7.retry.3", True),
        ("bravo.job-7", False),  # another tenant's job: a squat
        ("acme.job-8", False),  # another job of the same tenant
        ("acme.job-77", False),  # a prefix is not the id
        ("acme.job-7x.retry.1", False),
    ],
)
def test_a_header_fits_only_its_own_job(msg_id: str | None, fits: bool) -> None:
    assert job_msg_id_fits(msg_id, "acme", "job-7") is fits


def test_dead_letters_are_kept_per_tenant() -> None:
    s = Subjects("flotilla")
    assert s.dead_letter("acme", "j") == "flotilla.dlq.acme.j"
    assert s.dead_letter("acme", "j") != s.dead_letter("bravo", "j")
    assert s.dead_letter("", "stray-5") == "flotilla.dlq._.stray-5"  # never an empty token
    assert s.dead_letter_v1("j") == "flotilla.dlq.j"


def test_webhook_rows_show_their_outcome() -> None:
    def row(body: dict[str, object]) -> JobEventRecord:
        return JobEventRecord(event_id="w", kind="webhook", node_id="control", attempt=1, ts=0.0,
                              body=body)  # fmt: skip

    assert _detail(row({"delivered": True, "status": 204})) == "delivered"
    assert _detail(row({"delivered": False, "error": "timeout", "final": False})) == "timeout"
    assert _detail(row({"delivered": False, "error": "refused", "final": True})) == (
        "refused (final)"
    )


class _CommandBeforeTenants(Wire, kw_only=True):
    """NodeCommand as a node of the release before the tenant field decodes it."""

    verb: str
    job_id: str | None = None
    reason: str = ""
    deadline_s: float | None = None


def test_commands_without_a_tenant_reach_older_nodes() -> None:
    older = Decoder(_CommandBeforeTenants, "node command")
    for cmd in (NodeCommand(verb="drain", deadline_s=30.0), NodeCommand(verb="cancel", job_id="j")):
        assert older.decode(command_bytes(cmd)).verb == cmd.verb
    named = command_bytes(NodeCommand(verb="cancel", job_id="j", tenant="acme"))
    assert Decoder(NodeCommand, "node command").decode(named).tenant == "acme"
    with pytest.raises(DecodeError, match="tenant"):  # why the API leaves it out for them
        older.decode(named)
