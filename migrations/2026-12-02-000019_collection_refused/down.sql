UPDATE invoice_payments SET state = 'failed' WHERE state = 'refused';
ALTER TABLE invoice_payments DROP CONSTRAINT invoice_payments_state_check;
ALTER TABLE invoice_payments ADD CONSTRAINT invoice_payments_state_check
    CHECK (state IN ('pending', 'failed', 'paid', 'exhausted'));
