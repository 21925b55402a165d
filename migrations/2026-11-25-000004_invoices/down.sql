DROP INDEX subscriptions_due;
DROP TABLE jobs;
DROP TABLE invoice_lines;
DROP TABLE invoices;
DROP TABLE invoice_numbers;
DROP TABLE invoice_counter;
ALTER TABLE usage_rollups DROP COLUMN updated_at;
