-- API tenants, hashed API keys and webhook deliveries (owned by control/api/tenants.py and
-- control/webhooks.py). Numbered well above the core schema so the two never collide.
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
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per job whose callback has been handled (delivered or given up), plus every attempt
-- as a `webhook` row in job_events so the job's event list shows it.
CREATE TABLE webhook_deliveries (
    job_id        text PRIMARY KEY,
    url           text NOT NULL,
    attempts      integer NOT NULL DEFAULT 0,
    delivered     boolean NOT NULL DEFAULT false,
    last_status   integer,
    last_error    text,
    next_at       timestamptz NOT NULL DEFAULT now(),
    done_at       timestamptz
);
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (next_at) WHERE done_at IS NULL;
