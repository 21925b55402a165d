-- Credit an account holds: what invoices whose credits exceeded their charges carried forward,
-- less what later invoices applied. Never negative.
ALTER TABLE accounts ADD COLUMN credit_balance NUMERIC(28, 9) NOT NULL DEFAULT 0
    CHECK (credit_balance >= 0);
