ALTER TABLE accounts DROP COLUMN credit_balance;
