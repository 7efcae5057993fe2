"""Postgres access for the control plane: the connection pool and which errors mean "retry".

Schema changes live in numbered files under `migrations/` (applied by `migrate.py`); the SQL the
services run is in `queries.py`. jsonb values travel as JSON text (no codec is registered), so a
caller decodes them with msgspec.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg

log = logging.getLogger("flotilla.db")

#: Errors that mean "Postgres is unreachable, restarting or busy": retry the same work later.
#: Everything else from Postgres is about the data and is not cured by waiting.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.TransactionRollbackError,
    # A connection whose protocol state went astray (seen right after a Postgres restart, when
    # the pool's floor maintenance raced an acquire): expire the pool's connections and retry.
    asyncpg.exceptions.InternalClientError,
)


#: Errors about the data itself: Postgres refusing a row, or asyncpg unable to encode a value
#: (its client-side DataError is a ValueError). Waiting does not cure them.
DATA_ERRORS: tuple[type[BaseException], ...] = (asyncpg.PostgresError, ValueError)


def is_transient(exc: BaseException) -> bool:
    # asyncpg's client-side DataError (a value it cannot encode) is an InterfaceError and a
    # ValueError: it is about the data, like the server's errors, so it is not transient.
    return isinstance(exc, TRANSIENT_ERRORS) and not isinstance(exc, ValueError)


async def keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing past asyncpg's own step (which rolls back an open
    transaction). Its default reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL) is a
    round trip on every release, awaited by every `pool.fetch*` and `acquire()` block, and
    resets session state this code never keeps: its advisory locks and settings are
    transaction-scoped (`pg_advisory_xact_lock`, `set_config(..., true)`), it holds no cursor
    outside a transaction and listens to nothing. Keep it so."""


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    command_timeout: float = 30.0,
    attempts: int | None = None,
) -> asyncpg.Pool:
    """A pool whose first connection is retried with back-off (Postgres may start after us).

    asyncpg replaces a pool connection that broke (a Postgres restart) on its next acquire; the
    callers also `expire_connections()` on a transient error so every stale one goes at once.
    """
    delay, n = 0.2, 0
    while True:
        n += 1
        try:
            pool = await asyncpg.create_pool(
                dsn, min_size=min_size, max_size=max_size, command_timeout=command_timeout,
                reset=keep_session,
            )  # fmt: skip
        except TRANSIENT_ERRORS as exc:
            if attempts is not None and n >= attempts:
                raise
            log.warning("postgres unreachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            continue
        assert pool is not None
        return pool
