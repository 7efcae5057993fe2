-- A node about to run a redelivered job asks whether it already ended (control/jobend.py); an
-- ending whose attempt another node contested is not trusted, and this finds such events by job.
CREATE INDEX rejected_events_job_idx ON rejected_events (tenant, job_id, attempt);
