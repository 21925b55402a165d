-- The Stripe payment method an account set as its default (a trial converts only with one
-- when Stripe collects).
ALTER TABLE accounts ADD COLUMN payment_method text;
-- Accounts linked to a Stripe customer before this column existed got it by setting a payment
-- method: they keep converting their trials.
UPDATE accounts SET payment_method = 'on_file' WHERE stripe_customer_id IS NOT NULL;
