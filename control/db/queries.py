"""The SQL the ingest, retention and dead-letter code runs, as named constants.

Staging tables are session-local temp tables emptied at each commit, created on first use by
each pooled connection.
"""

from __future__ import annotations

from control.fold import FOLD_COLUMNS

# -- ingest: events ---------------------------------------------------------------------------
#: Run at the start of every ingest transaction (no NOTICE for the tables that exist).
STAGE_TABLES = """
SET LOCAL client_min_messages = warning;
CREATE TEMP TABLE IF NOT EXISTS ingest_stage (LIKE job_events INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS jobs_stage (LIKE jobs INCLUDING DEFAULTS)
    ON COMMIT DELETE ROWS;
"""
STAGE_EVENT_COLUMNS = (
    "event_id", "tenant", "job_id", "kind", "node_id", "attempt", "ts", "body", "stream_seq",
)  # fmt: skip

#: One statement for the whole batch; ordered so that concurrent batches lock keys in one order.
INSERT_EVENTS = """
INSERT INTO job_events (event_id, tenant, job_id, kind, node_id, attempt, ts, body, stream_seq)
SELECT event_id, tenant, job_id, kind, node_id, attempt, ts, body, stream_seq
FROM ingest_stage ORDER BY event_id
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

INSERT_BAD_EVENT = """
INSERT INTO bad_events (stream_seq, subject, error, payload) VALUES ($1, $2, $3, $4)
ON CONFLICT (stream_seq) DO NOTHING
"""

# -- ingest: jobs -----------------------------------------------------------------------------
#: Rows for jobs first seen in this batch, so that every job can be locked before folding.
INSERT_JOB_PLACEHOLDERS = """
INSERT INTO jobs (tenant, job_id, submitted_at)
SELECT tenant, job_id, submitted_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS t(tenant, job_id, submitted_at)
ORDER BY tenant, job_id
ON CONFLICT (tenant, job_id) DO NOTHING
"""

_select_cols = ", ".join("NULL::text AS result" if c == "result" else c for c in FOLD_COLUMNS)
LOCK_JOBS = f"""
SELECT {_select_cols} FROM jobs
WHERE (tenant, job_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
ORDER BY tenant, job_id FOR UPDATE
"""

_set_cols = [c for c in FOLD_COLUMNS if c not in ("tenant", "job_id", "result")]
UPDATE_JOBS_FROM_STAGE = f"""
UPDATE jobs AS j SET
    ({", ".join(_set_cols)}) = ({", ".join("s." + c for c in _set_cols)}),
    result = COALESCE(s.result, j.result),
    updated_at = now()
FROM jobs_stage AS s WHERE j.tenant = s.tenant AND j.job_id = s.job_id
"""

#: The API's submit (or a dead letter's spec): never moves a job's state.
UPSERT_SUBMITTED = """
INSERT INTO jobs AS j (job_id, tenant, pool, priority, operation, stream_seq, submitted_at,
                       queued_at, spec)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb)
ON CONFLICT (tenant, job_id) DO UPDATE SET
    pool = CASE WHEN j.pool = '' THEN EXCLUDED.pool ELSE j.pool END,
    priority = CASE WHEN j.priority = '' THEN EXCLUDED.priority ELSE j.priority END,
    operation = CASE WHEN j.operation = '' THEN EXCLUDED.operation ELSE j.operation END,
    stream_seq = GREATEST(j.stream_seq, EXCLUDED.stream_seq),
    submitted_at = LEAST(j.submitted_at, EXCLUDED.submitted_at),
    queued_at = LEAST(j.queued_at, EXCLUDED.queued_at),
    spec = COALESCE(j.spec, EXCLUDED.spec),
    updated_at = now()
"""

#: Specs carried by `accepted` events ($1 tenants, $2 job ids, $3 spec JSON): the first one kept,
#: as on submit.
SET_MISSING_SPECS = """
UPDATE jobs AS j SET spec = s.spec::jsonb, updated_at = now()
FROM unnest($1::text[], $2::text[], $3::text[]) AS s(tenant, job_id, spec)
WHERE j.tenant = s.tenant AND j.job_id = s.job_id AND j.spec IS NULL
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
