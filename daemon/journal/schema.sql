-- The node journal's schema as the migrations leave it (daemon/journal/migrations.py).
-- tests/test_journal.py checks that applying every migration to an empty file gives exactly this.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per delivery attempt of a job, named by (tenant, job_id); `state` follows the daemon's
-- lifecycle.
CREATE TABLE jobs (
    tenant      TEXT    NOT NULL DEFAULT '',
    job_id      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    stream_seq  INTEGER,
    subject     TEXT,
    pool        TEXT,
    priority    TEXT,
    state       TEXT    NOT NULL CHECK (state IN (
                    'received', 'running', 'paused', 'succeeded', 'failed', 'cancelled',
                    'handed_back', 'interrupted', 'retrying')),
    spec        TEXT,
    error       TEXT,
    scratch_dir TEXT,
    temp_paths  TEXT    NOT NULL DEFAULT '[]',
    received_at REAL    NOT NULL,
    started_at  REAL,
    finished_at REAL,
    updated_at  REAL    NOT NULL,
    PRIMARY KEY (tenant, job_id, attempt)
);
CREATE INDEX jobs_active ON jobs (state) WHERE state IN ('received', 'running', 'paused');
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Events waiting for (or past) their PubAck; seq is the publish order.
CREATE TABLE outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT    NOT NULL UNIQUE,
    subject    TEXT    NOT NULL,
    payload    BLOB    NOT NULL,
    kind       TEXT    NOT NULL,
    terminal   INTEGER NOT NULL DEFAULT 0,
    created_at REAL    NOT NULL,
    sent_at    REAL
);
CREATE INDEX outbox_unsent ON outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_unsent_kind ON outbox (kind, seq) WHERE sent_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;

-- The JetStream delivery behind each attempt: its ack subject (naked at start-up to hand an
-- interrupted job back at once), when JetStream last confirmed it held the message for us, the
-- attempt's terminal event (re-sent, not re-run, on a redelivery) and when the node settled the
-- message (ack, nak, term; or a restart's nak).
CREATE TABLE deliveries (
    tenant         TEXT    NOT NULL DEFAULT '',
    job_id         TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    stream_seq     INTEGER NOT NULL,
    reply          TEXT    NOT NULL,
    alive_at       REAL    NOT NULL,
    terminal_event TEXT,
    settled_at REAL,
    PRIMARY KEY (tenant, job_id, attempt)
);
CREATE INDEX deliveries_seq ON deliveries (tenant, job_id, stream_seq)
    WHERE terminal_event IS NOT NULL;
