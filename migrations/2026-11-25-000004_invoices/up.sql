-- Invoices (one per account and closed period), their lines, gap-free numbering, late-usage
-- detection, and the job queue.

-- When a rollup last changed: an invoiced period whose rollups changed after its invoice was
-- issued has late usage to bill.
ALTER TABLE usage_rollups ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();

-- Global, gap-free invoice numbers: one counter row, advanced once per transaction that issues
-- invoices (a block of numbers), and a registry keyed by number (SCALE.md rule 2) that also
-- finds an invoice's account from its number.
CREATE TABLE invoice_counter (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_number bigint NOT NULL
);
INSERT INTO invoice_counter (singleton, next_number) VALUES (true, 1);

CREATE TABLE invoice_numbers (
    number bigint PRIMARY KEY,
    account text NOT NULL
);

CREATE TABLE invoices (
    account text NOT NULL REFERENCES accounts (account),
    number bigint NOT NULL,
    -- period: a closed period's usage and the next period's advance fees;
    -- start: the first advance fees; change: a prorated mid-period change.
    kind text NOT NULL CHECK (kind IN ('period', 'start', 'change')),
    period_start timestamptz NOT NULL,
    period_end timestamptz NOT NULL,
    plan text NOT NULL,
    plan_version integer NOT NULL,
    seats integer NOT NULL,
    currency text NOT NULL,
    total numeric(28, 9) NOT NULL,
    status text NOT NULL CHECK (status IN ('open', 'paid', 'void', 'uncollectible')),
    collection text NOT NULL CHECK (collection IN ('manual', 'stripe')),
    issued_at timestamptz NOT NULL,
    PRIMARY KEY (account, number)
);
-- At most one period invoice per account and period, whatever runs the close.
CREATE UNIQUE INDEX invoices_one_per_period ON invoices (account, period_start) WHERE kind = 'period';
CREATE INDEX invoices_by_account_period ON invoices (account, period_start);

CREATE TABLE invoice_lines (
    account text NOT NULL,
    number bigint NOT NULL,
    line_no integer NOT NULL,
    kind text NOT NULL,
    meter text NULL,
    quantity numeric(28, 9) NOT NULL,
    amount numeric(28, 9) NOT NULL,
    description text NOT NULL,
    -- Usage lines: how many events, their time span, and the range of usage they price.
    event_count bigint NULL,
    first_event_at timestamptz NULL,
    last_event_at timestamptz NULL,
    usage_from timestamptz NULL,
    usage_to timestamptz NULL,
    PRIMARY KEY (account, number, line_no),
    FOREIGN KEY (account, number) REFERENCES invoices (account, number)
);

-- The job queue: a coordinator-only table on Citus (SCALE.md rule 7). Cron schedules insert
-- one row per firing (the unique key makes several instances insert it once); workers lease
-- rows with FOR UPDATE SKIP LOCKED.
CREATE TABLE jobs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind text NOT NULL,
    due_key text NOT NULL,
    run_at timestamptz NOT NULL,
    leased_until timestamptz NULL,
    attempts integer NOT NULL DEFAULT 0,
    last_error text NULL,
    done_at timestamptz NULL,
    created_at timestamptz NOT NULL,
    UNIQUE (kind, due_key)
);
CREATE INDEX jobs_pending ON jobs (run_at) WHERE done_at IS NULL;
CREATE INDEX subscriptions_due ON subscriptions (period_end);
