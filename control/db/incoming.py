"""What one ingest batch brings: decoded events, and messages that could not be decoded."""

from __future__ import annotations

from dataclasses import dataclass

from schemas.events import Event


@dataclass(frozen=True, slots=True)
class Incoming:
    """A decoded event with the JSON text it came as, and where it came from: its events-stream
    sequence and subject. No sequence: the control plane wrote it itself (a dead letter)."""

    event: Event
    body: str
    stream_seq: int | None = None
    subject: str = ""


@dataclass(frozen=True, slots=True)
class BadMessage:
    stream_seq: int
    subject: str
    error: str
    payload: bytes
