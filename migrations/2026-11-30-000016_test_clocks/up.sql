-- Test clocks (ACCRUE_TEST_CLOCKS=true): a frozen time that accounts created on the clock live
-- by, moved only by an explicit advance. A small global table (a reference table on Citus).
CREATE TABLE test_clocks (
    id text PRIMARY KEY,
    name text,
    frozen_time timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('ready', 'advancing')),
    created_at timestamptz NOT NULL
);
ALTER TABLE accounts ADD COLUMN test_clock text REFERENCES test_clocks (id);
CREATE INDEX accounts_test_clock ON accounts (test_clock) WHERE test_clock IS NOT NULL;
