-- A job is named by (tenant, job_id): two tenants may use the same job id. Every table keyed
-- by the job id alone gets the tenant into its key; existing rows take their job's tenant.
-- Not additive: every control-plane instance of an older version must be stopped first.
ALTER TABLE jobs DROP CONSTRAINT jobs_pkey;
ALTER TABLE jobs ADD CONSTRAINT jobs_pkey PRIMARY KEY (tenant, job_id);

ALTER TABLE job_events ADD COLUMN tenant text;
UPDATE job_events AS e SET tenant = j.tenant FROM jobs AS j
    WHERE e.job_id IS NOT NULL AND e.job_id = j.job_id;
UPDATE job_events SET tenant = '' WHERE job_id IS NOT NULL AND tenant IS NULL;
DROP INDEX job_events_job_idx;
CREATE INDEX job_events_job_idx ON job_events (tenant, job_id, ts, event_id)
    WHERE job_id IS NOT NULL;

ALTER TABLE job_attempts ADD COLUMN tenant text NOT NULL DEFAULT '';
UPDATE job_attempts AS a SET tenant = j.tenant FROM jobs AS j WHERE a.job_id = j.job_id;
ALTER TABLE job_attempts DROP CONSTRAINT job_attempts_pkey;
ALTER TABLE job_attempts ADD CONSTRAINT job_attempts_pkey PRIMARY KEY (tenant, job_id, attempt);

ALTER TABLE rejected_events ADD COLUMN tenant text NOT NULL DEFAULT '';

ALTER TABLE dead_letters ADD COLUMN tenant text NOT NULL DEFAULT '';
UPDATE dead_letters AS d SET tenant = j.tenant FROM jobs AS j WHERE d.job_id = j.job_id;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_pkey;
ALTER TABLE dead_letters ADD CONSTRAINT dead_letters_pkey
    PRIMARY KEY (tenant, job_id, stream_seq);

ALTER TABLE webhook_deliveries ADD COLUMN tenant text NOT NULL DEFAULT '';
UPDATE webhook_deliveries AS w SET tenant = j.tenant FROM jobs AS j WHERE w.job_id = j.job_id;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_pkey;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_pkey
    PRIMARY KEY (tenant, job_id);
