-- Collection through Stripe and dunning. Account-owned tables keep `account` first in every
-- key and reference other account-owned tables with `account` in the key (SCALE.md).

-- When the subscription's current run of failed payments began (NULL when paid up).
ALTER TABLE subscriptions ADD COLUMN past_due_since timestamptz NULL;

-- The collection of one invoice through the payment rail. Invoices stay immutable; this row
-- carries the moving parts (Stripe id, attempts, next retry).
CREATE TABLE invoice_payments (
    account text NOT NULL,
    number bigint NOT NULL,
    stripe_invoice_id text NULL,
    -- pending: not yet pushed or paid; failed: declined, a retry is scheduled;
    -- paid; exhausted: every retry failed and the final action applied.
    state text NOT NULL CHECK (state IN ('pending', 'failed', 'paid', 'exhausted')),
    -- Payment attempts made (declines and the success).
    attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    first_failure_at timestamptz NULL,
    next_attempt_at timestamptz NULL,
    amount_paid numeric(28, 9) NOT NULL DEFAULT 0,
    paid_at timestamptz NULL,
    last_error text NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (account, number),
    FOREIGN KEY (account, number) REFERENCES invoices (account, number)
);
CREATE INDEX invoice_payments_due ON invoice_payments (next_attempt_at)
    WHERE state IN ('pending', 'failed');

-- Every dunning step, with its time and reason.
CREATE TABLE dunning_steps (
    account text NOT NULL REFERENCES accounts (account),
    id bigint GENERATED ALWAYS AS IDENTITY,
    number bigint NOT NULL,
    at timestamptz NOT NULL,
    -- payment_failed, retry_scheduled, retry_failed, recovered, suspended, canceled
    step text NOT NULL,
    attempt integer NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (account, id),
    FOREIGN KEY (account, number) REFERENCES invoices (account, number)
);

-- Stripe webhook events already applied, keyed by Stripe's event id: a registry of a globally
-- unique value (SCALE.md rule 2; on Citus a table distributed by event_id).
CREATE TABLE stripe_events (
    event_id text NOT NULL PRIMARY KEY,
    event_type text NOT NULL,
    object_id text NULL,
    account text NULL,
    received_at timestamptz NOT NULL
);

-- This installation's id: the namespace of every idempotency key sent to Stripe, so that two
-- installations sharing a Stripe account never collide. Written once, on first start.
-- Catalogue-like (one row, never rewritten): a reference table on Citus.
CREATE TABLE installation (
    singleton boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    id text NOT NULL,
    created_at timestamptz NOT NULL
);
