-- Revenue movements, the outbox of outbound events, webhook endpoints and their deliveries.

-- Each account's current MRR and its parts (what the next movement starts from).
CREATE TABLE account_mrr (
    account text NOT NULL PRIMARY KEY REFERENCES accounts (account),
    mrr numeric(28, 9) NOT NULL,
    -- The usage part: the last closed period's usage revenue, normalized to a month.
    usage_mrr numeric(28, 9) NOT NULL,
    currency text NOT NULL,
    -- Whether the account ever had MRR (a return is a reactivation, not new).
    had_mrr boolean NOT NULL,
    updated_at timestamptz NOT NULL
);

-- Every change of an account's MRR, written in the transaction of its cause.
CREATE TABLE revenue_movements (
    account text NOT NULL REFERENCES accounts (account),
    id bigint GENERATED ALWAYS AS IDENTITY,
    at timestamptz NOT NULL,
    kind text NOT NULL CHECK (kind IN ('new', 'expansion', 'contraction', 'churn', 'reactivation')),
    cause text NOT NULL,
    mrr_before numeric(28, 9) NOT NULL,
    mrr_after numeric(28, 9) NOT NULL,
    currency text NOT NULL,
    -- What caused it: a subscription change, an invoice or a dunning step.
    ref_kind text NOT NULL CHECK (ref_kind IN ('subscription_change', 'invoice', 'dunning_step')),
    ref_id bigint NOT NULL,
    PRIMARY KEY (account, id)
);
CREATE INDEX revenue_movements_at ON revenue_movements (at);

-- Outbound events, written in the transaction of their cause. `seq` is assigned afterwards by
-- the sequencer in commit order, so a feed cursor never skips an event committed late.
CREATE TABLE outbox (
    account text NOT NULL REFERENCES accounts (account),
    id bigint GENERATED ALWAYS AS IDENTITY,
    -- The stable id receivers de-duplicate on.
    event_id text NOT NULL,
    kind text NOT NULL,
    payload jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    seq bigint NULL,
    PRIMARY KEY (account, id)
);
CREATE INDEX outbox_unsequenced ON outbox (id) WHERE seq IS NULL;
CREATE INDEX outbox_seq ON outbox (seq) WHERE seq IS NOT NULL;

-- The sequencer's counter (one row, locked while sequencing). Coordinator-only on Citus.
CREATE TABLE outbox_sequencer (
    singleton boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    next_seq bigint NOT NULL
);
INSERT INTO outbox_sequencer (singleton, next_seq) VALUES (true, 1);

-- Registered receivers (catalogue-like: few rows, rarely written; a reference table on Citus).
CREATE TABLE webhook_endpoints (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url text NOT NULL,
    -- Event kinds delivered; empty: every kind.
    kinds text[] NOT NULL,
    secret text NOT NULL,
    -- The last outbox seq fanned out into deliveries.
    cursor_seq bigint NOT NULL,
    created_at timestamptz NOT NULL,
    disabled_at timestamptz NULL
);

-- One event to one endpoint. Keyed by endpoint (distributed by endpoint_id on Citus).
CREATE TABLE webhook_deliveries (
    endpoint_id bigint NOT NULL REFERENCES webhook_endpoints (id),
    seq bigint NOT NULL,
    account text NOT NULL,
    event_id text NOT NULL,
    state text NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    last_error text NULL,
    delivered_at timestamptz NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (endpoint_id, seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
