-- The schema after every migration in migrations/, for reading and for the test that the
-- migrations end here (tests/test_migrations.py). Change both together. (schema_migrations,
-- the runner's own table, is left out.)
-- Times are timestamptz (UTC); the API turns them into epoch seconds. Node state is not here:
-- each instance keeps it in memory from the node KV bucket (control/nodes.py).

-- Jobs: the current state of each job, folded monotonically from its events (control/fold.py).
-- state_rank: 0 submitted, 1 queued (accepted by a node), 2 running, 3 queued again (retrying,
-- handed back, interrupted), 4 terminal. (attempts, state_rank, state_ts, state_event_id) is
-- the claim a newer non-terminal event must beat.
-- A job is named by (tenant, job_id): two tenants may use one job id (0120_tenant_job_ids.sql).
CREATE TABLE jobs (
    job_id            text NOT NULL,
    tenant            text NOT NULL DEFAULT '',
    pool              text NOT NULL DEFAULT '',
    priority          text NOT NULL DEFAULT '',
    operation         text NOT NULL DEFAULT '',
    state             text NOT NULL DEFAULT 'submitted'
                      CHECK (state IN ('submitted', 'queued', 'running',
                                       'completed', 'failed', 'cancelled')),
    state_rank        smallint NOT NULL DEFAULT 0,
    state_ts          timestamptz,
    state_event_id    text,
    node_id           text,
    attempts          integer NOT NULL DEFAULT 0,
    stream_seq        bigint,
    submitted_at      timestamptz NOT NULL DEFAULT now(),
    queued_at         timestamptz,
    started_at        timestamptz,
    finished_at       timestamptz,
    percent           double precision,
    fps               double precision,
    speed             double precision,
    progress_attempt  integer NOT NULL DEFAULT 0,
    progress_at       timestamptz,
    last_error        text,
    stderr_tail       text,
    error_at          timestamptz,
    result            jsonb,
    spec              jsonb,
    dead_lettered     boolean NOT NULL DEFAULT false,
    -- Set when a dead letter is re-submitted: events older than this belong to the old run.
    resubmitted_at    timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT jobs_pkey PRIMARY KEY (tenant, job_id)
);
-- Listing newest first with keyset paging on (submitted_at, job_id), alone or by one filter.
CREATE INDEX jobs_submitted_idx ON jobs (submitted_at DESC, job_id DESC);
CREATE INDEX jobs_state_idx ON jobs (state, submitted_at DESC, job_id DESC);
CREATE INDEX jobs_tenant_idx ON jobs (tenant, submitted_at DESC, job_id DESC);
CREATE INDEX jobs_node_idx ON jobs (node_id, submitted_at DESC, job_id DESC);
-- Queue depth, oldest wait and stuck jobs per pool look only at unfinished jobs.
CREATE INDEX jobs_active_idx ON jobs (pool, state, queued_at)
    WHERE state IN ('submitted', 'queued', 'running');
-- Failure rate over a window.
CREATE INDEX jobs_finished_idx ON jobs (finished_at) WHERE finished_at IS NOT NULL;
-- A terminated-message advisory names only the stream sequence.
CREATE INDEX jobs_stream_seq_idx ON jobs (stream_seq);

-- Every event as received, idempotent by event id. Node events have no job id.
CREATE TABLE job_events (
    event_id     text PRIMARY KEY,
    job_id       text,
    kind         text NOT NULL,
    node_id      text NOT NULL,
    attempt      integer NOT NULL DEFAULT 0,
    ts           timestamptz NOT NULL,
    body         jsonb NOT NULL,
    stream_seq   bigint,
    ingested_at  timestamptz NOT NULL DEFAULT now(),
    -- The job's tenant (NULL with job_id for node events).
    tenant       text
);
CREATE INDEX job_events_job_idx ON job_events (tenant, job_id, ts, event_id)
    WHERE job_id IS NOT NULL;
CREATE INDEX job_events_node_idx ON job_events (node_id, ts);
-- Retention pruning deletes the oldest events in bounded batches.
CREATE INDEX job_events_ts_idx ON job_events (ts);

-- Messages on the events stream that could not be decoded: kept for inspection, never retried.
CREATE TABLE bad_events (
    stream_seq   bigint PRIMARY KEY,
    subject      text NOT NULL,
    error        text NOT NULL,
    payload      bytea NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now()
);

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
    tenant       text NOT NULL DEFAULT '',
    CONSTRAINT job_attempts_pkey PRIMARY KEY (tenant, job_id, attempt)
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
    received_at  timestamptz NOT NULL DEFAULT now(),
    tenant       text NOT NULL DEFAULT ''
);
-- The `rejected_events` alert counts the recent ones.
CREATE INDEX rejected_events_received_idx ON rejected_events (received_at);
-- A redelivered job's end is trusted only where no event of its attempt was refused.
CREATE INDEX rejected_events_job_idx ON rejected_events (tenant, job_id, attempt);

-- Alerts as the alert engine fires and resolves them; one firing alert per (rule, subject).
CREATE TABLE alerts (
    alert_id     text PRIMARY KEY,
    rule         text NOT NULL,
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state        text NOT NULL CHECK (state IN ('firing', 'resolved')),
    subject      text NOT NULL,
    summary      text NOT NULL DEFAULT '',
    value        double precision,
    threshold    double precision,
    fired_at     timestamptz NOT NULL,
    resolved_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX alerts_firing_idx ON alerts (rule, subject) WHERE state = 'firing';
CREATE INDEX alerts_fired_idx ON alerts (fired_at DESC);

-- Jobs whose message exhausted its deliveries or was terminated by a node; the message itself
-- is kept in the dead-letter stream at `dlq_seq`, from where `flotilla jobs retry` re-submits it.
CREATE TABLE dead_letters (
    job_id       text NOT NULL,
    stream_seq   bigint NOT NULL,
    source       text NOT NULL CHECK (source IN ('max_deliveries', 'terminated', 'stray')),
    reason       text NOT NULL,
    deliveries   integer NOT NULL DEFAULT 0,
    subject      text,
    pool         text,
    priority     text,
    payload      bytea,
    dlq_seq      bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    retried_at   timestamptz,
    tenant       text NOT NULL DEFAULT '',
    CONSTRAINT dead_letters_pkey PRIMARY KEY (tenant, job_id, stream_seq)
);
CREATE INDEX dead_letters_created_idx ON dead_letters (created_at DESC);

-- From 0100_api.sql (tenants, API keys, webhook deliveries).
CREATE TABLE tenants (
    tenant          text PRIMARY KEY,
    -- HMAC secret for webhook signatures.
    webhook_secret  text NOT NULL,
    max_queued      integer NOT NULL DEFAULT 10000 CHECK (max_queued >= 0),
    submit_rate     double precision NOT NULL DEFAULT 50 CHECK (submit_rate > 0),
    submit_burst    integer NOT NULL DEFAULT 100 CHECK (submit_burst >= 1),
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Only the sha256 of a key is stored; the key itself is shown once, when it is made.
CREATE TABLE api_keys (
    key_hash    text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (tenant) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    revoked     boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- From 0101_api_keys.sql: the public id, role, expiry, lazy last use and rotation.
    key_id        text NOT NULL CONSTRAINT api_keys_key_id_key UNIQUE,
    role          text NOT NULL DEFAULT 'tenant' CHECK (role IN ('tenant', 'operator')),
    expires_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    rotated_from  text
);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant, created_at);

-- One row per job whose callback has been handled (delivered or given up), plus every attempt
-- as a `webhook` row in job_events so the job's event list shows it.
CREATE TABLE webhook_deliveries (
    job_id        text NOT NULL,
    url           text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    delivered     boolean NOT NULL DEFAULT false,
    last_status   integer,
    last_error    text,
    next_at       timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz,
    tenant        text NOT NULL DEFAULT '',
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (tenant, job_id)
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (next_at) WHERE done_at IS NULL;

-- From 0101_api_keys.sql: one submit token bucket per tenant, shared by every instance.
CREATE TABLE tenant_buckets (
    tenant       text PRIMARY KEY,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL
);

-- The fleet webhook secret: signs callbacks of tenants without a tenants row when
-- `webhooks.secret_file` is unset. One row at most, generated on first use.
CREATE TABLE webhook_fleet_secret (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- From 0130_row_retention.sql: retention walks each table by the age of its finished rows.
CREATE INDEX jobs_tenant_finished_idx ON jobs (tenant, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX webhook_deliveries_done_idx ON webhook_deliveries (done_at)
    WHERE done_at IS NOT NULL;
CREATE INDEX dead_letters_retried_idx ON dead_letters (retried_at) WHERE retried_at IS NOT NULL;

-- From 0140_workflows.sql (control/workflows): one submission naming a DAG of jobs. The leader
-- advances each running workflow from its steps' job states.
CREATE TABLE workflows (
    tenant       text NOT NULL,
    workflow_id  text NOT NULL,
    state        text NOT NULL DEFAULT 'running'
                 CHECK (state IN ('running', 'completed', 'failed', 'cancelled')),
    priority     text NOT NULL DEFAULT 'normal',
    spec         jsonb NOT NULL,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflows_pkey PRIMARY KEY (tenant, workflow_id)
);
CREATE INDEX workflows_running_idx ON workflows (created_at) WHERE state = 'running';
CREATE INDEX workflows_created_idx ON workflows (tenant, created_at DESC);
-- Retention deletes ended workflows (their steps cascade) by age.
CREATE INDEX workflows_finished_idx ON workflows (finished_at) WHERE finished_at IS NOT NULL;

-- One row per step; `job` is the step's job spec with references resolved (what is published).
CREATE TABLE workflow_steps (
    tenant        text NOT NULL,
    workflow_id   text NOT NULL,
    name          text NOT NULL,
    position      integer NOT NULL,
    needs         text[] NOT NULL DEFAULT '{}',
    state         text NOT NULL DEFAULT 'waiting'
                  CHECK (state IN ('waiting', 'submitted', 'completed', 'failed', 'cancelled')),
    job_id        text NOT NULL,
    job           jsonb NOT NULL,
    output        text,
    error         text,
    submitted_at  timestamptz,
    finished_at   timestamptz,
    CONSTRAINT workflow_steps_pkey PRIMARY KEY (tenant, workflow_id, name),
    CONSTRAINT workflow_steps_workflow_fkey FOREIGN KEY (tenant, workflow_id)
        REFERENCES workflows (tenant, workflow_id) ON DELETE CASCADE
);

-- From 0150_runtime_estimates.sql (docs/deadlines.md): each job's deadline and submit-time run
-- estimate, and run times learned from completed jobs.
ALTER TABLE jobs ADD COLUMN deadline timestamptz;
ALTER TABLE jobs ADD COLUMN estimated_run_s double precision;
CREATE INDEX jobs_deadline_idx ON jobs (deadline)
    WHERE deadline IS NOT NULL AND state IN ('submitted', 'queued', 'running');
CREATE TABLE runtime_estimates (
    operation   text NOT NULL,
    codec       text NOT NULL,
    height      integer NOT NULL,
    pool        text NOT NULL,
    runs        integer NOT NULL DEFAULT 0,
    wall_s      double precision NOT NULL DEFAULT 0,
    rtf_runs    integer NOT NULL DEFAULT 0,
    rtf         double precision NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT runtime_estimates_pkey PRIMARY KEY (operation, codec, height, pool)
);
