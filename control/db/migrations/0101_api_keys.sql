-- API keys get a short public id, a role, an expiry, lazy last-use and rotation; and the submit
-- rate limit moves into Postgres so that every control-plane instance draws from one bucket
-- per tenant (owned by control/api/keys.py and control/api/ratelimit.py).
ALTER TABLE api_keys
    ADD COLUMN key_id text,
    ADD COLUMN role text NOT NULL DEFAULT 'tenant' CHECK (role IN ('tenant', 'operator')),
    ADD COLUMN expires_at timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN revoked_at timestamptz,
    ADD COLUMN rotated_from text;
-- Keys made before ids existed get one derived from their hash (the key itself is unknown).
UPDATE api_keys SET key_id = 'k_' || substr(md5(key_hash), 1, 12);
ALTER TABLE api_keys ALTER COLUMN key_id SET NOT NULL;
ALTER TABLE api_keys ADD CONSTRAINT api_keys_key_id_key UNIQUE (key_id);
CREATE INDEX api_keys_tenant_idx ON api_keys (tenant, created_at);

-- One token bucket per tenant: `tokens` as of `refilled_at`; the refill is computed in SQL on
-- each submit (one UPDATE ... RETURNING), so N instances allow the rate once, not N times.
CREATE TABLE tenant_buckets (
    tenant       text PRIMARY KEY,
    tokens       double precision NOT NULL,
    refilled_at  timestamptz NOT NULL
);
