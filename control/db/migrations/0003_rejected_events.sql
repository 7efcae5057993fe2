-- A node may report only on the attempts it holds. The first event recorded for (job, attempt)
-- names its holder (normally the node's `accepted`; a node that declines before accepting
-- reports `handed_back` or `failed` first); later events of that attempt from any other node
-- are rejected (control/db/holders.py).
CREATE TABLE job_attempts (
    job_id       text NOT NULL,
    attempt      integer NOT NULL,
    node_id      text NOT NULL,
    -- The claiming event, and its own time: a dead letter's re-submission starts the attempt
    -- numbers again, so a claim older than jobs.resubmitted_at belongs to the dead run.
    event_id     text NOT NULL,
    kind         text NOT NULL,
    ts           timestamptz NOT NULL,
    claimed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, attempt)
);

-- Job events refused because their node does not hold the attempt: never folded, kept here.
CREATE TABLE rejected_events (
    event_id     text PRIMARY KEY,
    stream_seq   bigint,
    subject      text NOT NULL,
    node_id      text NOT NULL,
    job_id       text NOT NULL,
    attempt      integer NOT NULL,
    kind         text NOT NULL,
    reason       text NOT NULL,
    holder       text,
    payload      jsonb NOT NULL,
    ts           timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);
-- The `rejected_events` alert counts the recent ones.
CREATE INDEX rejected_events_received_idx ON rejected_events (received_at);

-- Attempts already under way keep the node that reported them first.
INSERT INTO job_attempts (job_id, attempt, node_id, event_id, kind, ts)
SELECT DISTINCT ON (job_id, attempt) job_id, attempt, node_id, event_id, kind, ts
FROM job_events
WHERE job_id IS NOT NULL AND stream_seq IS NOT NULL
ORDER BY job_id, attempt, stream_seq, event_id;
