DROP TABLE installation;
DROP TABLE stripe_events;
DROP TABLE dunning_steps;
DROP TABLE invoice_payments;
ALTER TABLE subscriptions DROP COLUMN past_due_since;
