ALTER TABLE accounts DROP COLUMN payment_method;
