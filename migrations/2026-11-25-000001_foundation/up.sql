-- Foundation: API keys (catalogue), events with forever-dedup, hourly rollups.
-- Citus-ready (see SCALE.md): every account-owned table has `account text` as the first
-- key column; no unique key without account; no triggers; bigint identities only.

-- Catalogue table (a reference table on Citus): looked up by hash, rarely written.
CREATE TABLE api_keys (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_hash text NOT NULL UNIQUE,
    prefix text NOT NULL,
    name text NOT NULL,
    scopes text[] NOT NULL,
    -- When set, the key reaches this account only. Checked in the app: a catalogue table may
    -- not reference an account-owned one.
    account text NULL,
    created_by text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz NULL
);

-- Every accepted event, once. The primary key is the forever dedup on (account, id).
CREATE TABLE events (
    account text NOT NULL,
    id text NOT NULL,
    event_type text NOT NULL,
    ts timestamptz NOT NULL,
    properties jsonb NOT NULL DEFAULT '{}'::jsonb,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (account, id)
);

-- Per (account, meter, hour): everything needed for count, sum, max, latest, and the invoice
-- lineage (event count, first and last event time). Maintained on the write path.
CREATE TABLE usage_rollups (
    account text NOT NULL,
    meter text NOT NULL,
    bucket timestamptz NOT NULL,
    event_count bigint NOT NULL,
    value_sum numeric(28, 9) NOT NULL,
    value_max numeric(28, 9) NULL,
    latest_at timestamptz NULL,
    latest_event_id text NULL,
    latest_value numeric(28, 9) NULL,
    first_event_at timestamptz NOT NULL,
    last_event_at timestamptz NOT NULL,
    PRIMARY KEY (account, meter, bucket)
);

-- Distinct keys of unique_count meters per (account, meter, hour).
CREATE TABLE usage_unique_keys (
    account text NOT NULL,
    meter text NOT NULL,
    bucket timestamptz NOT NULL,
    key text NOT NULL,
    PRIMARY KEY (account, meter, bucket, key)
);

-- Instrumentation governance: every event type seen, per account (summed for the report).
CREATE TABLE event_type_counts (
    account text NOT NULL,
    event_type text NOT NULL,
    event_count bigint NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    PRIMARY KEY (account, event_type)
);
