"""What a delivered job message must pass before it may run, and how a refused one is named.

The stored subject is what NATS permissions held the producer to, and the `Nats-Msg-Id` is what
JetStream deduplicated the publish on: a body or a header that names another tenant's job is
refused (a final `failed` event, then the message is termed), never run.
"""

from __future__ import annotations

from schemas.codec import DecodeError
from schemas.jobs import JobSpec
from schemas.subjects import check_token, job_msg_id, job_msg_id_fits, parse_stored


def reported_id(token: str, stream_seq: int) -> str:
    """The id a job's events carry: its subject's, or, when that is no valid id (the control
    plane would refuse every event naming it), `invalid-<stream seq>`, so the failure still
    reaches Postgres and the operator finds it by the message's place in the stream."""
    try:
        return check_token(token, "job id")
    except ValueError:
        return f"invalid-{stream_seq}"


def reported_tenant(subject: str, spec: JobSpec | None) -> str:
    """The tenant an invalid job's failure names: its stored subject's; under the version 1
    subject (none there) the body's, if it decoded; else "" (the control plane looks it up)."""
    try:
        stored = parse_stored(subject).tenant
    except ValueError:
        return ""
    tenant = stored if stored is not None else (spec.tenant if spec is not None else "")
    try:
        return check_token(tenant, "tenant")
    except ValueError:
        return ""


def check_msg_id(spec: JobSpec, msg_id: str | None) -> None:
    """JetStream dedups on `Nats-Msg-Id` alone, whoever set it: a job under another tenant's id
    makes that tenant's own submit of it a duplicate, dropped unseen. Such a job is refused
    (never run), so the forgery shows as its failure. `spec.tenant` is the subject's by now."""
    if not job_msg_id_fits(msg_id, spec.tenant, spec.job_id):
        expected = job_msg_id(spec.tenant, spec.job_id)
        raise DecodeError(
            "JobSpec", f"header Nats-Msg-Id {msg_id!r} is not this job's: expected {expected!r}"
        )


def check_subject(spec: JobSpec, subject: str, pool: str, priority: str) -> None:
    """The stored subject and the body must agree. The tenant token is what NATS permissions
    held the producer to, so a body naming another tenant is refused, never run as that one.
    A job stored under the version 1 subject (before the upgrade) has no tenant token: it was
    accepted under the old rules, and its body's tenant stands."""
    try:
        stored = parse_stored(subject)
    except ValueError as exc:
        raise DecodeError("JobSpec", str(exc)) from None
    if (spec.pool, spec.priority, spec.job_id) != (pool, priority, stored.job_id):
        raise DecodeError("JobSpec", f"subject says {pool}/{priority}/{stored.job_id}")
    if stored.tenant is not None and stored.tenant != spec.tenant:
        raise DecodeError(
            "JobSpec", f"subject says tenant {stored.tenant!r}, body says tenant {spec.tenant!r}"
        )
