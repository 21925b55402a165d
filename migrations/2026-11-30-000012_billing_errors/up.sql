-- Accounts the period close could not move: recorded, reported, retried by the next sweep,
-- resolved when a later close succeeds. One row per account (distribution key: account).
CREATE TABLE billing_errors (
    account text PRIMARY KEY,
    first_failed_at timestamptz NOT NULL,
    last_failed_at timestamptz NOT NULL,
    attempts integer NOT NULL,
    code text NOT NULL,
    message text NOT NULL,
    resolved_at timestamptz
);
CREATE INDEX billing_errors_open ON billing_errors (last_failed_at) WHERE resolved_at IS NULL;
