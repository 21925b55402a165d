ALTER TABLE invoices DROP COLUMN period_share;
