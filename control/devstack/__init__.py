"""The whole fleet on one machine: embedded nats-server and PostgreSQL, the dev fleet
and `make demo`. For development and tests, never on a production host."""
