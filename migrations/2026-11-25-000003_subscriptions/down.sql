DROP TABLE subscription_changes;
DROP TABLE idempotency_keys;
DROP TABLE quotes;
DROP TABLE subscriptions;
DROP TABLE accounts;
