-- Deadlines (docs/deadlines.md): run times learned from completed jobs, and each job's deadline
-- and submit-time run estimate, which the leader's at-risk check reads.
ALTER TABLE jobs ADD COLUMN deadline timestamptz;
ALTER TABLE jobs ADD COLUMN estimated_run_s double precision;
UPDATE jobs SET deadline = (spec->>'deadline')::timestamptz
    WHERE spec->>'deadline' IS NOT NULL AND state IN ('submitted', 'queued', 'running');
-- The at-risk check reads only unfinished jobs that have a deadline.
CREATE INDEX jobs_deadline_idx ON jobs (deadline)
    WHERE deadline IS NOT NULL AND state IN ('submitted', 'queued', 'running');

-- One row per (operation, video codec, output height bucket, pool): running means of completed
-- runs (control/runtimes.py). Updated in the fold, once per job that becomes completed.
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
