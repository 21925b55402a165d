-- Accounts, subscriptions, quotes with idempotent acceptance, and the change history.
-- Account-owned tables: `account text` first in every key; foreign keys only between
-- account-owned tables with account in the key, or to catalogue tables (SCALE.md).

CREATE TABLE accounts (
    account text NOT NULL PRIMARY KEY,
    name text NULL,
    email text NULL,
    employees integer NULL CHECK (employees >= 0),
    industry text NULL,
    country text NULL,
    crm_owner text NULL,
    stripe_customer_id text NULL,
    -- The currency of the account's first paid plan; every later plan must match it.
    currency text NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

CREATE TABLE subscriptions (
    account text NOT NULL PRIMARY KEY REFERENCES accounts (account),
    plan text NOT NULL,
    plan_version integer NOT NULL,
    seats integer NOT NULL CHECK (seats >= 0),
    status text NOT NULL CHECK (status IN ('trialing', 'active', 'past_due', 'suspended', 'canceled')),
    anchor timestamptz NOT NULL,
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    trial_end timestamptz NULL,
    -- A change waiting for the period end: {"plan", "version", "seats", "cancel"}.
    scheduled jsonb NULL,
    -- Bumped by every change; a quote is valid only against the revision it was made on.
    revision bigint NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    FOREIGN KEY (plan, plan_version) REFERENCES plan_versions (plan, version)
);

CREATE TABLE quotes (
    account text NOT NULL REFERENCES accounts (account),
    id text NOT NULL,
    base_revision bigint NOT NULL,
    -- The quote exactly as answered; acceptance executes this and nothing else.
    body jsonb NOT NULL,
    expires_at timestamptz NOT NULL,
    accepted_at timestamptz NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (account, id)
);

CREATE TABLE idempotency_keys (
    account text NOT NULL REFERENCES accounts (account),
    key text NOT NULL,
    -- What the key was used for; the same key with another target is refused.
    target text NOT NULL,
    status smallint NOT NULL,
    response jsonb NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (account, key)
);

CREATE TABLE subscription_changes (
    account text NOT NULL REFERENCES accounts (account),
    id bigint GENERATED ALWAYS AS IDENTITY,
    kind text NOT NULL,
    at timestamptz NOT NULL,
    quote_id text NULL,
    from_plan text NULL,
    from_version integer NULL,
    from_seats integer NULL,
    to_plan text NULL,
    to_version integer NULL,
    to_seats integer NULL,
    lines jsonb NOT NULL DEFAULT '[]'::jsonb,
    amount numeric(28, 9) NOT NULL DEFAULT 0,
    currency text NULL,
    PRIMARY KEY (account, id)
);
