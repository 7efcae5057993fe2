-- The fleet webhook secret (control/webhooks/signing.py): signs callbacks of tenants without a
-- tenants row when `webhooks.secret_file` is unset. One row at most, generated on first use.
CREATE TABLE webhook_fleet_secret (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
