-- Retention of finished rows (control/db/prune.py): each delete walks an index on its age, so
-- one batch reads only the rows it removes.
-- Canary jobs keep a much shorter retention than the rest: found by tenant and age.
CREATE INDEX jobs_tenant_finished_idx ON jobs (tenant, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX webhook_deliveries_done_idx ON webhook_deliveries (done_at)
    WHERE done_at IS NOT NULL;
CREATE INDEX dead_letters_retried_idx ON dead_letters (retried_at) WHERE retried_at IS NOT NULL;
