-- When a distinct key was first written, in database time (the writing transaction's start).
-- The check cache holds each cached account's keys and reads only those written since its
-- last read (less a grace for transactions that wrote before and commit after it), instead of
-- every key of the period every second (security review M7).
ALTER TABLE usage_unique_keys ADD COLUMN written_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX usage_unique_keys_written ON usage_unique_keys (account, written_at);
