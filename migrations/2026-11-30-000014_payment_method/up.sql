-- The Stripe payment method an account set as its default (a trial converts only with one
-- when Stripe collects).
ALTER TABLE accounts ADD COLUMN payment_method text;
