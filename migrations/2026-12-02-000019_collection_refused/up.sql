-- A collection Stripe refused for good (a 4xx on the push: a deleted customer, an amount
-- Stripe cannot take): it stops retrying until the account's payment details change.
ALTER TABLE invoice_payments DROP CONSTRAINT invoice_payments_state_check;
ALTER TABLE invoice_payments ADD CONSTRAINT invoice_payments_state_check
    CHECK (state IN ('pending', 'failed', 'paid', 'exhausted', 'refused'));
