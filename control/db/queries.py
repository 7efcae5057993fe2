"""The SQL the submit, retention and dead-letter code runs, as named constants (ingest's own
statements live next to their code: control/db/store.py, holders.py)."""

from __future__ import annotations

# -- jobs -------------------------------------------------------------------------------------
#: The API's submit (or a dead letter's spec): never moves a job's state.
UPSERT_SUBMITTED = """
INSERT INTO jobs AS j (job_id, tenant, pool, priority, operation, stream_seq, submitted_at,
                       queued_at, spec, deadline, estimated_run_s)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11)
ON CONFLICT (tenant, job_id) DO UPDATE SET
    pool = CASE WHEN j.pool = '' THEN EXCLUDED.pool ELSE j.pool END,
    priority = CASE WHEN j.priority = '' THEN EXCLUDED.priority ELSE j.priority END,
    operation = CASE WHEN j.operation = '' THEN EXCLUDED.operation ELSE j.operation END,
    stream_seq = GREATEST(j.stream_seq, EXCLUDED.stream_seq),
    submitted_at = LEAST(j.submitted_at, EXCLUDED.submitted_at),
    queued_at = LEAST(j.queued_at, EXCLUDED.queued_at),
    spec = COALESCE(j.spec, EXCLUDED.spec),
    deadline = COALESCE(j.deadline, EXCLUDED.deadline),
    estimated_run_s = COALESCE(j.estimated_run_s, EXCLUDED.estimated_run_s),
    updated_at = now()
"""

# -- retention --------------------------------------------------------------------------------
PRUNE_EVENTS = """
DELETE FROM job_events WHERE event_id IN (
    SELECT event_id FROM job_events WHERE ts < $1 ORDER BY ts LIMIT $2
)
"""

#: Finished jobs to delete ($1 cut-off on finished_at, $2 batch), locked. A job ingest holds (a
#: late event, a retry) is skipped this round; FOR UPDATE re-checks the state, so a job a
#: dead-letter retry made unfinished again is never taken. By age through jobs_finished_idx.
DOOMED_JOBS = """
SELECT tenant, job_id FROM jobs
WHERE finished_at < $1 AND state IN ('completed', 'failed', 'cancelled')
ORDER BY finished_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""
#: The same for one tenant ($3), the canary, through jobs_tenant_finished_idx. No ORDER BY: by
#: finished_at the planner may walk jobs_finished_idx past every other tenant's older jobs.
DOOMED_TENANT_JOBS = """
SELECT tenant, job_id FROM jobs
WHERE tenant = $3 AND finished_at < $1 AND state IN ('completed', 'failed', 'cancelled')
LIMIT $2 FOR UPDATE SKIP LOCKED
"""
#: A job's rows ($1 tenants, $2 job ids), each table by its key; the jobs last.
_JOB_KEYS = "(tenant, job_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))"
DELETE_JOB_ROWS = (
    f"DELETE FROM job_attempts WHERE {_JOB_KEYS}",
    f"DELETE FROM job_events WHERE job_id IS NOT NULL AND {_JOB_KEYS}",
    f"DELETE FROM webhook_deliveries WHERE {_JOB_KEYS}",
    f"DELETE FROM jobs WHERE {_JOB_KEYS}",
)

PRUNE_REJECTED_EVENTS = """
DELETE FROM rejected_events WHERE event_id IN (
    SELECT event_id FROM rejected_events WHERE received_at < $1 ORDER BY received_at LIMIT $2
)
"""

#: Deliveries that ended (delivered or given up) before $1.
PRUNE_WEBHOOK_DELIVERIES = """
DELETE FROM webhook_deliveries WHERE (tenant, job_id) IN (
    SELECT tenant, job_id FROM webhook_deliveries WHERE done_at < $1 ORDER BY done_at LIMIT $2
)
"""

#: Dead letters re-submitted before $1; those never retried stay for `flotilla jobs retry`.
PRUNE_DEAD_LETTERS = """
DELETE FROM dead_letters WHERE (tenant, job_id, stream_seq) IN (
    SELECT tenant, job_id, stream_seq FROM dead_letters WHERE retried_at < $1
    ORDER BY retried_at LIMIT $2
)
"""

#: Workflows that ended before $1; their steps go with them (ON DELETE CASCADE). A running
#: workflow stays, however old.
PRUNE_WORKFLOWS = """
DELETE FROM workflows WHERE (tenant, workflow_id) IN (
    SELECT tenant, workflow_id FROM workflows WHERE finished_at < $1 ORDER BY finished_at LIMIT $2
)
"""

# -- dead letters -----------------------------------------------------------------------------
JOB_BY_STREAM_SEQ = """
SELECT tenant, job_id, state, pool, priority, last_error, spec::text AS spec, dead_lettered
FROM jobs WHERE stream_seq = $1 ORDER BY updated_at DESC LIMIT 1
"""

INSERT_DEAD_LETTER = """
INSERT INTO dead_letters (tenant, job_id, stream_seq, source, reason, deliveries, subject, pool,
                          priority, payload, dlq_seq, created_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
ON CONFLICT (tenant, job_id, stream_seq) DO NOTHING
"""

MARK_DEAD_LETTERED = """
UPDATE jobs SET dead_lettered = true, updated_at = now() WHERE tenant = $1 AND job_id = $2
"""

#: Re-submitting a dead letter ($4 tenant, $1 job id) starts a new run of the job at $2 (now).
#: Events older than the cut-off belong to the dead run: its end, but at most $3 seconds before
#: now (node clocks may lag ours a little; the dead run's events all precede its end).
RESET_FOR_RETRY = """
UPDATE jobs SET state = 'submitted', state_rank = 0, state_ts = $2, state_event_id = NULL,
    node_id = NULL, attempts = 0, queued_at = $2, started_at = NULL, finished_at = NULL,
    percent = NULL, fps = NULL, speed = NULL, progress_attempt = 0, progress_at = NULL,
    result = NULL, dead_lettered = false, updated_at = now(),
    resubmitted_at = LEAST($2::timestamptz,
                           GREATEST(finished_at, $2::timestamptz - make_interval(secs => $3)))
WHERE tenant = $4 AND job_id = $1
"""

LOCK_JOB = "SELECT 1 FROM jobs WHERE tenant = $1 AND job_id = $2 FOR UPDATE"

SET_STREAM_SEQ = "UPDATE jobs SET stream_seq = $2 WHERE tenant = $3 AND job_id = $1"

MARK_RETRIED = """
UPDATE dead_letters SET retried_at = now()
WHERE tenant = $2 AND job_id = $1 AND retried_at IS NULL
"""
