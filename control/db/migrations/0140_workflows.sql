-- Workflows (control/workflows): one submission naming a DAG of jobs. The leader advances each
-- running workflow from its steps' job states; every step row says what it did (state, job).
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
-- The leader's sweep reads only the running ones; listing is newest first.
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
