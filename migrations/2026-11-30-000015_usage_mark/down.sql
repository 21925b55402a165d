ALTER TABLE invoices DROP COLUMN usage_mark;
