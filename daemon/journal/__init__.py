"""The node's journal: one SQLite file with job attempts and the event outbox, its
group commit, migrations and pruning, and the publisher that drains the outbox."""
