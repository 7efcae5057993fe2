"""Which Postgres errors the control plane waits out and which it treats as bad data."""

from __future__ import annotations

import asyncpg
import pytest

from control.db import is_transient


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionResetError(),
        TimeoutError(),
        asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.InternalClientError("cannot switch to state 15"),
        asyncpg.exceptions.SerializationError("could not serialize"),
    ],
)
def test_outages_and_confused_connections_are_retried(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.DataError("invalid input syntax"),
        asyncpg.exceptions.InvalidTextRepresentationError("bad text"),
        ValueError("cannot encode"),
    ],
)
def test_data_errors_are_not_retried(exc: BaseException) -> None:
    assert not is_transient(exc)
