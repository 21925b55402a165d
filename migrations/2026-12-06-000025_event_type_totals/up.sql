-- Instrumentation governance, counted per type instead of per account on single-node
-- PostgreSQL: each ingest lane adds its groups' counts to its own rows here (`shard` names the
-- process's lane and group slot, so no two groups in flight share a row), one row per type per
-- group instead of one per account and type. `event_type_counts` then keeps one row per
-- (account, type) written once, for the report's count of accounts; on Citus it still keeps
-- the counts per account. The report adds both tables. Rows of shards idle for an hour are
-- folded into the shard '' row when an instance starts.
CREATE TABLE event_type_totals (
    event_type text NOT NULL,
    shard text NOT NULL,
    event_count bigint NOT NULL,
    first_seen_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (event_type, shard)
);
