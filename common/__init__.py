"""Plumbing both sides share: config files, the NATS connection, systemd notify, logs,
supervised tasks and the release version. It imports only `schemas`; `daemon` and `control`
import it, never the other way round."""
