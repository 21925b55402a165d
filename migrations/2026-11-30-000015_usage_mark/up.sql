-- Late-usage detection in database time, never an application clock. An invoice records the
-- database time its issuing transaction started, less 30 s of grace for ingest transactions
-- that wrote their rollups before and commit after it; a rollup written (clock_timestamp())
-- after the mark may hold usage the invoice did not see, and its period is recomputed (which
-- bills nothing when the usage was in fact seen).
ALTER TABLE invoices ADD COLUMN usage_mark timestamptz
    NOT NULL DEFAULT (transaction_timestamp() - interval '30 seconds');
UPDATE invoices SET usage_mark = issued_at;
